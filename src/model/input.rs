//! A model's input description: the settings read from a sidecar file and
//! the command line, resolved against the model's input shape into the
//! [`Preprocessing`] that turns images into its input tensor.
//!
//! The sidecar is a TOML file next to the model, `NAME.preprocess.toml` for
//! `NAME.onnx`, with any of these keys:
//!
//! ```toml
//! size = 224                 # or [width, height]
//! layout = "nchw"            # or "nhwc"
//! channels = "rgb"           # or "bgr"
//! # Either value = pixel * scale + offset, pixels in 0-255 ...
//! scale = 0.00784313725      # one number, or one per channel
//! offset = -1.0
//! # ... or value = (pixel / 255 - mean) / std, as torchvision writes it.
//! mean = [0.485, 0.456, 0.406]
//! std = [0.229, 0.224, 0.225]
//! ```
//!
//! Per-channel values are in the tensor's channel order (blue first for
//! `channels = "bgr"`). A key given without its partner pairs with the
//! partner's neutral value: scale 1, offset 0, mean 0, std 1. Command-line options override the file key by key,
//! except that normalisation given on the command line replaces the file's
//! as a whole.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::preprocess::{ChannelOrder, Layout, Preprocessing, INPUT_SIDE};

/// Input settings given in a sidecar file or as options; unset ones come
/// from the model's input shape, else from the built-in model's
/// preprocessing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub size: Option<InputSize>,
    pub layout: Option<Layout>,
    pub channels: Option<ChannelOrder>,
    pub scale: Option<PerChannel>,
    pub offset: Option<PerChannel>,
    pub mean: Option<PerChannel>,
    pub std: Option<PerChannel>,
}

/// Width and height of the model input, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeValue")]
pub struct InputSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Side(u32),
    WidthHeight([u32; 2]),
}

impl TryFrom<SizeValue> for InputSize {
    type Error = String;

    fn try_from(value: SizeValue) -> Result<InputSize, String> {
        let (width, height) = match value {
            SizeValue::Side(side) => (side, side),
            SizeValue::WidthHeight([width, height]) => (width, height),
        };
        if !(1..=MAX_INPUT_SIDE).contains(&width) || !(1..=MAX_INPUT_SIDE).contains(&height) {
            return Err(format!(
                "invalid input size {width}x{height}: each side must be 1 to {MAX_INPUT_SIDE}"
            ));
        }
        Ok(InputSize { width, height })
    }
}

/// Largest input side accepted; 4096 x 4096 x 3 floats is 200 MB per image.
const MAX_INPUT_SIDE: u32 = 4096;

impl FromStr for InputSize {
    type Err = String;

    /// Parses `N` (a square) or `WxH`.
    fn from_str(text: &str) -> Result<InputSize, String> {
        let parse = |part: &str| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("invalid input size {text:?}: expected N or WIDTHxHEIGHT"))
        };
        let value = match text.split_once(['x', 'X']) {
            Some((width, height)) => SizeValue::WidthHeight([parse(width)?, parse(height)?]),
            None => SizeValue::Side(parse(text)?),
        };
        InputSize::try_from(value)
    }
}

/// One value for all three channels, or one per channel.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "ChannelValue")]
pub struct PerChannel(pub [f32; 3]);

#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelValue {
    All(f32),
    Each([f32; 3]),
}

impl TryFrom<ChannelValue> for PerChannel {
    type Error = String;

    fn try_from(value: ChannelValue) -> Result<PerChannel, String> {
        let values = match value {
            ChannelValue::All(value) => [value; 3],
            ChannelValue::Each(values) => values,
        };
        if values.iter().all(|v| v.is_finite()) {
            Ok(PerChannel(values))
        } else {
            Err(format!("invalid channel values {values:?}: must be finite"))
        }
    }
}

impl FromStr for PerChannel {
    type Err = String;

    /// Parses one number or three separated by commas.
    fn from_str(text: &str) -> Result<PerChannel, String> {
        let numbers: Result<Vec<f32>, _> = text.split(',').map(|n| n.trim().parse()).collect();
        let invalid = || format!("invalid channel values {text:?}: expected X or X,Y,Z");
        let value = match numbers.map_err(|_| invalid())?.as_slice() {
            [all] => ChannelValue::All(*all),
            [first, second, third] => ChannelValue::Each([*first, *second, *third]),
            _ => return Err(invalid()),
        };
        PerChannel::try_from(value)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: cannot read the preprocessing file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid preprocessing file: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Returns the sidecar file looked for next to a model: `NAME.preprocess.toml`
/// for `NAME.onnx`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    model.with_extension("preprocess.toml")
}

/// Returns the settings for a model: `options` over those of the
/// preprocessing file, which is `file` when given, else the model's sidecar
/// when it exists. The built-in model (`model` is `None`) has no sidecar.
pub fn settings_for(
    model: Option<&Path>,
    file: Option<&Path>,
    options: &InputSettings,
) -> Result<(InputSettings, Option<PathBuf>), InputError> {
    let read_from = match (file, model) {
        (Some(file), _) => Some(file.to_path_buf()),
        (None, Some(model)) => Some(sidecar_path(model)).filter(|sidecar| sidecar.is_file()),
        (None, None) => None,
    };
    let from_file = match &read_from {
        Some(path) => read_settings(path)?,
        None => InputSettings::default(),
    };
    Ok((options.or(&from_file), read_from))
}

/// Reads the settings of a preprocessing file.
pub fn read_settings(path: &Path) -> Result<InputSettings, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| InputError::Parse {
        path: path.to_path_buf(),
        message: error.to_string().trim_end().to_string(),
    })
}

impl InputSettings {
    /// Returns these settings with the unset ones taken from `fallback`.
    /// Normalisation is taken as a whole: from `self` when it sets any of
    /// scale, offset, mean or std, else from `fallback`.
    pub fn or(&self, fallback: &InputSettings) -> InputSettings {
        let own_normalisation = self.has_normalisation();
        let normalisation = if own_normalisation { self } else { fallback };
        InputSettings {
            size: self.size.or(fallback.size),
            layout: self.layout.or(fallback.layout),
            channels: self.channels.or(fallback.channels),
            scale: normalisation.scale,
            offset: normalisation.offset,
            mean: normalisation.mean,
            std: normalisation.std,
        }
    }

    fn has_normalisation(&self) -> bool {
        self.scale.is_some() || self.offset.is_some() || self.mean.is_some() || self.std.is_some()
    }

    /// Resolves the settings against the model's input dimensions (`None`
    /// for a symbolic one): the layout is read from where the 3 channels
    /// are when not set, and the size from fixed height and width.
    pub fn resolve(&self, dims: &[Option<i64>]) -> Result<Preprocessing, String> {
        if dims.len() != 4 {
            return Err(format!(
                "the input has {} dimensions; expected [N,3,H,W] or [N,H,W,3]",
                dims.len()
            ));
        }
        let layout = self.layout.unwrap_or_else(|| detect_layout(dims));
        let (channel_axis, height_axis, width_axis) = match layout {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        };
        if dims[channel_axis].is_some_and(|channels| channels != 3) {
            return Err(format!(
                "the input has shape {}; layout {} needs 3 channels at axis {channel_axis}",
                show_dims(dims),
                layout.name()
            ));
        }
        let model_size = match (dims[width_axis], dims[height_axis]) {
            (Some(width), Some(height)) => Some((width, height)),
            _ => None,
        };
        let size = match (self.size, model_size) {
            (Some(size), Some((width, height)))
                if i64::from(size.width) != width || i64::from(size.height) != height =>
            {
                return Err(format!(
                    "input size {}x{} was given, but the model takes {width}x{height}",
                    size.width, size.height
                ))
            }
            (Some(size), _) => size,
            (None, Some((width, height))) => {
                let side = |value: i64| u32::try_from(value).unwrap_or(0);
                InputSize::try_from(SizeValue::WidthHeight([side(width), side(height)]))?
            }
            (None, None) => InputSize {
                width: INPUT_SIDE,
                height: INPUT_SIDE,
            },
        };
        let (mean, std) = self.normalisation()?;
        Ok(Preprocessing {
            width: size.width,
            height: size.height,
            layout,
            channel_order: self.channels.unwrap_or(ChannelOrder::Rgb),
            mean,
            std,
        })
    }

    /// Returns the per-channel mean and standard deviation in 0-255 pixel
    /// units.
    fn normalisation(&self) -> Result<([f32; 3], [f32; 3]), String> {
        let scale_offset = self.scale.is_some() || self.offset.is_some();
        let mean_std = self.mean.is_some() || self.std.is_some();
        let (mean, std) = match (scale_offset, mean_std) {
            (true, true) => {
                return Err("give either scale and offset or mean and std, not both".to_string())
            }
            (true, false) => {
                // pixel * scale + offset == (pixel - (-offset / scale)) / (1 / scale)
                let scale = self.scale.unwrap_or(PerChannel([1.0; 3])).0;
                let offset = self.offset.unwrap_or(PerChannel([0.0; 3])).0;
                if scale.contains(&0.0) {
                    return Err(format!("invalid scale {scale:?}: must not be 0"));
                }
                (
                    std::array::from_fn(|c| -offset[c] / scale[c]),
                    std::array::from_fn(|c| 1.0 / scale[c]),
                )
            }
            (false, true) => {
                let mean = self.mean.unwrap_or(PerChannel([0.0; 3])).0;
                let std = self.std.unwrap_or(PerChannel([1.0; 3])).0;
                if std.contains(&0.0) {
                    return Err(format!("invalid std {std:?}: must not be 0"));
                }
                (mean.map(|m| m * 255.0), std.map(|s| s * 255.0))
            }
            (false, false) => {
                let default = Preprocessing::default();
                (default.mean, default.std)
            }
        };
        Ok((mean, std))
    }
}

/// Picks the layout whose channel axis has 3 entries; NCHW when both or
/// neither do.
fn detect_layout(dims: &[Option<i64>]) -> Layout {
    let last_is_rgb = dims[3] == Some(3);
    let second_is_rgb = dims[1] == Some(3);
    if last_is_rgb && !second_is_rgb {
        Layout::Nhwc
    } else {
        Layout::Nchw
    }
}

fn show_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InputSettings {
        toml::from_str(text).unwrap()
    }

    const NCHW_224: [Option<i64>; 4] = [None, Some(3), Some(224), Some(224)];

    #[test]
    fn empty_settings_give_built_in_preprocessing() {
        let resolved = InputSettings::default().resolve(&NCHW_224).unwrap();
        assert_eq!(resolved, Preprocessing::default());
    }

    #[test]
    fn torchvision_file_resolves_to_pixel_units() {
        let settings = parse(
            "size = 224\nlayout = \"nchw\"\nchannels = \"rgb\"\n\
             mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n",
        );
        let resolved = settings.resolve(&NCHW_224).unwrap();
        assert_eq!(resolved.mean, [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0]);
        assert_eq!(resolved.std, [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0]);
        assert_eq!(resolved.channel_order, ChannelOrder::Rgb);
    }

    #[test]
    fn scale_and_offset_become_mean_and_std() {
        let settings = parse("scale = 0.00392156862745098\n");
        let resolved = settings.resolve(&NCHW_224).unwrap();
        assert_eq!(resolved.mean, [0.0; 3]);
        assert!((resolved.std[0] - 255.0).abs() < 1e-3, "{:?}", resolved.std);

        let caffe = parse("channels = \"bgr\"\noffset = [-103.94, -116.78, -123.68]\n");
        let resolved = caffe.resolve(&NCHW_224).unwrap();
        assert_eq!(resolved.mean, [103.94, 116.78, 123.68]);
        assert_eq!(resolved.std, [1.0; 3]);
        assert_eq!(resolved.channel_order, ChannelOrder::Bgr);
    }

    #[test]
    fn layout_and_size_come_from_model_input() {
        let nhwc = [None, Some(299), Some(320), Some(3)];
        let resolved = InputSettings::default().resolve(&nhwc).unwrap();
        assert_eq!(resolved.layout, Layout::Nhwc);
        assert_eq!((resolved.width, resolved.height), (320, 299));

        let dynamic = [None, Some(3), None, None];
        let resolved = parse("size = [256, 192]").resolve(&dynamic).unwrap();
        assert_eq!(resolved.layout, Layout::Nchw);
        assert_eq!((resolved.width, resolved.height), (256, 192));
    }

    #[test]
    fn conflicts_with_model_are_rejected() {
        let error = parse("size = 256").resolve(&NCHW_224).unwrap_err();
        assert!(error.contains("the model takes 224x224"), "{error}");
        let error = parse("layout = \"nhwc\"").resolve(&NCHW_224).unwrap_err();
        assert!(error.contains("3 channels at axis 3"), "{error}");
        let error = InputSettings::default()
            .resolve(&[None, Some(3), Some(224)])
            .unwrap_err();
        assert!(error.contains("3 dimensions"), "{error}");
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let both = parse("scale = 2.0\nmean = 0.5");
        assert!(both.resolve(&NCHW_224).unwrap_err().contains("not both"));
        let zero = parse("std = [0.2, 0.0, 0.2]");
        assert!(zero
            .resolve(&NCHW_224)
            .unwrap_err()
            .contains("must not be 0"));
        assert!(toml::from_str::<InputSettings>("sise = 224").is_err());
        assert!(toml::from_str::<InputSettings>("size = 0").is_err());
        assert!(toml::from_str::<InputSettings>("mean = [0.1, 0.2]").is_err());
        assert!(toml::from_str::<InputSettings>("layout = \"chw\"").is_err());
    }

    #[test]
    fn command_line_values_parse() {
        assert_eq!(
            "299".parse::<InputSize>().unwrap(),
            InputSize {
                width: 299,
                height: 299
            }
        );
        assert_eq!(
            "320x240".parse::<InputSize>().unwrap(),
            InputSize {
                width: 320,
                height: 240
            }
        );
        assert!("0x10".parse::<InputSize>().is_err());
        assert!("big".parse::<InputSize>().is_err());
        assert_eq!("0.5".parse::<PerChannel>().unwrap(), PerChannel([0.5; 3]));
        assert_eq!(
            "1, 2,3".parse::<PerChannel>().unwrap(),
            PerChannel([1.0, 2.0, 3.0])
        );
        assert!("1,2".parse::<PerChannel>().is_err());
        assert!("nan".parse::<PerChannel>().is_err());
    }

    #[test]
    fn command_line_overrides_file() {
        let file = parse("size = 299\nchannels = \"bgr\"\nmean = 0.5\nstd = 0.5");
        let options = InputSettings {
            channels: Some(ChannelOrder::Rgb),
            scale: Some(PerChannel([2.0; 3])),
            ..InputSettings::default()
        };
        let merged = options.or(&file);
        assert_eq!(merged.size, file.size);
        assert_eq!(merged.channels, Some(ChannelOrder::Rgb));
        assert_eq!(merged.scale, Some(PerChannel([2.0; 3])));
        assert_eq!(merged.mean, None);
        assert_eq!(merged.std, None);
    }
}
