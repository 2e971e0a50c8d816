-- Initial schema: indexed images with their vectors, the model that made
-- them, and the HNSW file that matches them.

-- The model whose vectors this database holds. One row at most: a database
-- never mixes vectors from two models.
CREATE TABLE model (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    dimension INTEGER NOT NULL CHECK (dimension > 0),
    preprocessing TEXT NOT NULL
);

-- One row per indexed file. `path` is the absolute path as raw OS bytes, so
-- names that are not valid UTF-8 survive. `modified_ns` is the file's
-- modification time in nanoseconds since the Unix epoch. `width` and
-- `height` are the decoded size after EXIF orientation. `vector` is the
-- L2-normalised embedding as little-endian f32.
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    file_size INTEGER NOT NULL,
    modified_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    vector BLOB NOT NULL,
    indexed_at INTEGER NOT NULL
);

-- Counters kept by the database itself. `data_generation` changes whenever
-- a row of `images` is inserted, updated or deleted, so a saved HNSW file
-- built at another generation is known to be stale.
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('data_generation', 0);

CREATE TRIGGER images_after_insert AFTER INSERT ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;
CREATE TRIGGER images_after_update AFTER UPDATE ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;
CREATE TRIGGER images_after_delete AFTER DELETE ON images BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'data_generation';
END;

-- The saved HNSW graph that matches `data_generation` = `generation`.
-- `basename` names the two files beside the database
-- (`<basename>.hnsw.graph` and `<basename>.hnsw.data`); the sizes and
-- digests let a reader detect a truncated or foreign file before loading it.
CREATE TABLE ann_index (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    basename TEXT NOT NULL,
    graph_size INTEGER NOT NULL,
    graph_digest TEXT NOT NULL,
    data_size INTEGER NOT NULL,
    data_digest TEXT NOT NULL,
    point_count INTEGER NOT NULL,
    max_connections INTEGER NOT NULL,
    ef_construction INTEGER NOT NULL
);
