-- Stable image ids, content fingerprints and animation flags.
--
-- Ids become AUTOINCREMENT so they are never reused: an id that stays in a
-- saved HNSW graph after its row is deleted can then only be a tombstone,
-- never another image. `fingerprint` is the BLAKE3 hash of the whole file
-- (32 bytes), used to recognise moved, renamed and copied files without
-- decoding them; rows indexed before this migration have none. `animated`
-- is 1 for GIF, PNG or WebP files with more than one frame (the first frame
-- is indexed).

CREATE TABLE images_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path BLOB NOT NULL UNIQUE,
    file_size INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL,
    fingerprint BLOB,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    animated INTEGER NOT NULL DEFAULT 0,
    vector BLOB NOT NULL,
    indexed_at INTEGER NOT NULL
);

INSERT INTO images_new
    (id, path, file_size, modified_ns, width, height, format, vector, indexed_at)
SELECT id, path, file_size, modified_ns, width, height, format, vector, indexed_at
FROM images;

DROP TABLE images;
ALTER TABLE images_new RENAME TO images;

CREATE INDEX images_fingerprint ON images (fingerprint);

CREATE TRIGGER images_after_insert AFTER INSERT ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;
CREATE TRIGGER images_after_update AFTER UPDATE ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;
CREATE TRIGGER images_after_delete AFTER DELETE ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;

-- A saved graph covers the image ids up to `max_image_id`; rows with larger
-- ids were added after it and are inserted when the graph is updated.
-- Records written before this migration lack that bound, so they are
-- dropped and the graph is rebuilt once.
DELETE FROM ann_index;
ALTER TABLE ann_index ADD COLUMN max_image_id INTEGER NOT NULL DEFAULT 0;

UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
