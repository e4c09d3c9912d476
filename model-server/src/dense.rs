//! `safetensors`: a generic dense feed-forward network described by a small config.
//!
//! A model folder holds `model.safetensors` and `config.json`:
//!
//! ```json
//! {
//!   "input": {"name": "input-0", "datatype": "FP32", "shape": [-1, 4]},
//!   "layers": [
//!     {"type": "dense", "weight": "fc1.weight", "bias": "fc1.bias"},
//!     {"type": "relu"},
//!     {"type": "dense", "weight": "fc2.weight"},
//!     {"type": "softmax"}
//!   ],
//!   "output": {"name": "scores"},
//!   "max_batch_size": 4096
//! }
//! ```
//!
//! Dense weights are `[out, in]` (PyTorch's `nn.Linear` layout), biases `[out]`; activations
//! are `relu`, `gelu` (exact, erf), `gelu_tanh`, `tanh`, `sigmoid` and `softmax` (over the
//! features). The input is `[-1, features]` of any numeric datatype (computed in FP32); the
//! one output (default name `output-0`) is FP32 `[-1, width of the last dense layer]`. Every
//! tensor is checked against the config at load; errors name the config field and tensor.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::InferError;
use crate::model::{LoadError, Model, ModelMetadata, TensorMetadata};
use crate::tensor::{DataType, NamedTensor, TensorData};

/// The format name in `sluice-model.json` and `modelFormat`.
pub const DENSE_FORMAT: &str = "safetensors";
/// The config file in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The output's name when the config gives none.
pub const DEFAULT_OUTPUT: &str = "output-0";

/// `config.json` of a `safetensors` model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseConfig {
    /// The single input tensor.
    pub input: InputSpec,
    /// Layers in order, input to output.
    pub layers: Vec<LayerSpec>,
    /// The output tensor (default: `output-0`).
    #[serde(default)]
    pub output: Option<OutputSpec>,
    /// Most rows accepted in one request.
    #[serde(default = "default_max_batch")]
    pub max_batch_size: usize,
}

/// The input tensor of a dense model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Tensor name.
    pub name: String,
    /// Wire datatype (any numeric one; computed in FP32).
    pub datatype: String,
    /// `[-1, features]`.
    pub shape: Vec<i64>,
}

/// The output tensor of a dense model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Tensor name.
    pub name: String,
}

/// One layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// `y = x Wᵀ + b`.
    Dense {
        /// Name of the `[out, in]` weight tensor in `model.safetensors`.
        weight: String,
        /// Name of the `[out]` bias tensor, if any.
        #[serde(default)]
        bias: Option<String>,
    },
    /// `max(x, 0)`.
    Relu,
    /// GELU, exact (erf).
    Gelu,
    /// GELU, tanh approximation.
    GeluTanh,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Softmax over the features of each row.
    Softmax,
}

fn default_max_batch() -> usize {
    4096
}

impl DenseConfig {
    /// Checks the config itself (not the tensors); the error names the field.
    fn validate(&self) -> Result<(DataType, usize), String> {
        if self.input.name.is_empty() {
            return Err("input.name must not be empty".into());
        }
        let datatype = DataType::parse(&self.input.datatype)
            .filter(|d| *d != DataType::Bytes)
            .ok_or_else(|| {
                format!(
                    "input.datatype {:?} is not a numeric tensor datatype (e.g. FP32)",
                    self.input.datatype
                )
            })?;
        let features = match self.input.shape.as_slice() {
            [-1, f] if *f > 0 => *f as usize,
            other => {
                return Err(format!(
                    "input.shape {other:?} must be [-1, features] with features > 0"
                ));
            }
        };
        if !self
            .layers
            .iter()
            .any(|l| matches!(l, LayerSpec::Dense { .. }))
        {
            return Err("layers must hold at least one dense layer".into());
        }
        if let Some(out) = &self.output
            && out.name.is_empty()
        {
            return Err("output.name must not be empty".into());
        }
        if self.max_batch_size == 0 {
            return Err("max_batch_size must be > 0".into());
        }
        Ok((datatype, features))
    }

    fn output_name(&self) -> &str {
        self.output.as_ref().map_or(DEFAULT_OUTPUT, |o| &o.name)
    }
}

/// A layer ready to run.
#[derive(Debug)]
enum Layer {
    Dense(Linear),
    Relu,
    Gelu,
    GeluTanh,
    Tanh,
    Sigmoid,
    Softmax,
}

/// The network: layers built from the weights, checked against each other.
#[derive(Debug)]
pub struct DenseNet {
    layers: Vec<Layer>,
    features: usize,
    outputs: usize,
}

impl DenseNet {
    /// Builds the layers from `vb`; the error names the layer field and tensor at fault.
    pub fn new(config: &DenseConfig, features: usize, vb: &VarBuilder) -> Result<Self, String> {
        let mut width = features;
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, spec) in config.layers.iter().enumerate() {
            layers.push(match spec {
                LayerSpec::Dense { weight, bias } => {
                    let w = tensor(vb, weight, &format!("layers[{i}].weight"))?;
                    let (out, inp) = match w.dims() {
                        [out, inp] => (*out, *inp),
                        dims => {
                            return Err(format!(
                                "layers[{i}].weight: tensor {weight:?} has shape {dims:?}, \
                                 expected [out, {width}]"
                            ));
                        }
                    };
                    if inp != width || out == 0 {
                        return Err(format!(
                            "layers[{i}].weight: tensor {weight:?} has shape [{out}, {inp}], \
                             expected [out, {width}] (the width coming into this layer)"
                        ));
                    }
                    let b = match bias {
                        None => None,
                        Some(name) => {
                            let b = tensor(vb, name, &format!("layers[{i}].bias"))?;
                            if b.dims() != [out] {
                                return Err(format!(
                                    "layers[{i}].bias: tensor {name:?} has shape {:?}, \
                                     expected [{out}] (the rows of {weight:?})",
                                    b.dims()
                                ));
                            }
                            Some(b)
                        }
                    };
                    width = out;
                    Layer::Dense(Linear::new(w, b))
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Gelu => Layer::Gelu,
                LayerSpec::GeluTanh => Layer::GeluTanh,
                LayerSpec::Tanh => Layer::Tanh,
                LayerSpec::Sigmoid => Layer::Sigmoid,
                LayerSpec::Softmax => Layer::Softmax,
            });
        }
        Ok(Self {
            layers,
            features,
            outputs: width,
        })
    }

    /// The output for a `[batch, features]` input.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Dense(l) => l.forward(&h)?,
                Layer::Relu => h.relu()?,
                Layer::Gelu => h.gelu_erf()?,
                Layer::GeluTanh => h.gelu()?,
                Layer::Tanh => h.tanh()?,
                Layer::Sigmoid => candle_nn::ops::sigmoid(&h)?,
                Layer::Softmax => candle_nn::ops::softmax_last_dim(&h)?,
            };
        }
        Ok(h)
    }
}

/// Tensor `name` from the file, F32; `field` is the config field that names it.
fn tensor(vb: &VarBuilder, name: &str, field: &str) -> Result<Tensor, String> {
    if !vb.contains_tensor(name) {
        return Err(format!("{field}: tensor {name:?} is not in {WEIGHTS_FILE}"));
    }
    vb.get_unchecked(name)
        .map_err(|e| format!("{field}: tensor {name:?}: {e}"))
}

/// A loaded `safetensors` dense model.
#[derive(Debug)]
pub struct Dense {
    config: DenseConfig,
    net: DenseNet,
    metadata: ModelMetadata,
}

impl Dense {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let config_err = |message| LoadError::Config {
            path: config_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let config: DenseConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            config_err(if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            })
        })?;
        let mut config = config;
        let (datatype, features) = config.validate().map_err(config_err)?;
        config.input.datatype = datatype.as_str().to_owned();
        let weights_path = dir.join(WEIGHTS_FILE);
        let vb = crate::weights::map_file(&weights_path, &Device::Cpu)?;
        let net = DenseNet::new(&config, features, &vb).map_err(|m| LoadError::Weights {
            path: weights_path.clone(),
            source: candle_core::Error::Msg(m),
        })?;
        Ok(Self::from_parts(name, config, net))
    }

    /// Wraps an already-built network.
    pub fn from_parts(name: &str, config: DenseConfig, net: DenseNet) -> Self {
        let metadata = ModelMetadata {
            name: name.to_owned(),
            versions: Vec::new(),
            platform: "sluice-candle".to_owned(),
            inputs: vec![TensorMetadata {
                name: config.input.name.clone(),
                datatype: config.input.datatype.clone(),
                shape: vec![-1, net.features as i64],
            }],
            outputs: vec![TensorMetadata {
                name: config.output_name().to_owned(),
                datatype: DataType::Fp32.as_str().to_owned(),
                shape: vec![-1, net.outputs as i64],
            }],
        };
        Self {
            config,
            net,
            metadata,
        }
    }
}

impl Model for Dense {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError> {
        let features = self.net.features;
        let [input] = inputs else {
            return Err(InferError::InvalidInput {
                tensor: self.config.input.name.clone(),
                message: format!("expected exactly one input, got {}", inputs.len()),
            });
        };
        let rows = match input.shape.as_slice() {
            [rows, f] if *f == features => *rows,
            _ => {
                return Err(input.invalid(format!(
                    "shape {:?} does not match [-1, {features}]",
                    input.shape
                )));
            }
        };
        if rows > self.config.max_batch_size {
            return Err(input.invalid(format!(
                "{rows} rows exceed the model's max batch size {}",
                self.config.max_batch_size
            )));
        }
        let data = match &input.data {
            TensorData::Fp32(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            other => std::borrow::Cow::Owned(other.to_f32_vec().ok_or_else(|| {
                input.invalid(format!("datatype {} is not numeric", input.datatype()))
            })?),
        };
        if data.len() != rows * features {
            return Err(input.invalid(format!(
                "{} elements do not fill shape {:?}",
                data.len(),
                input.shape
            )));
        }
        let x = Tensor::from_slice(data.as_ref(), (rows, features), &Device::Cpu)?;
        let y = self.net.forward(&x)?;
        let (_, width) = y.dims2()?;
        Ok(vec![NamedTensor::new(
            self.config.output_name(),
            vec![rows, width],
            TensorData::Fp32(y.flatten_all()?.to_vec1::<f32>()?),
        )])
    }

    fn batchable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use serde_json::{Value, json};

    use super::*;
    use crate::formats::load_model;
    use crate::model::validate_inputs;

    /// A model folder written by the test: `config` and the named tensors.
    struct Folder(PathBuf);

    impl Folder {
        fn new(tag: &str, config: &Value, tensors: &[(&str, Tensor)]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sluice-dense-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(CONFIG_FILE), config.to_string()).unwrap();
            let map: HashMap<String, Tensor> = tensors
                .iter()
                .map(|(n, t)| ((*n).to_owned(), t.clone()))
                .collect();
            candle_core::safetensors::save(&map, dir.join(WEIGHTS_FILE)).unwrap();
            Self(dir)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn t2(rows: &[&[f32]]) -> Tensor {
        let v: Vec<Vec<f32>> = rows.iter().map(|r| r.to_vec()).collect();
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn t1(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// 2 → 3 (bias, relu) → 2 (no bias) → softmax.
    fn two_layer_config() -> Value {
        json!({
            "input": {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            "layers": [
                {"type": "dense", "weight": "fc1.weight", "bias": "fc1.bias"},
                {"type": "relu"},
                {"type": "dense", "weight": "fc2.weight"},
                {"type": "softmax"}
            ],
            "output": {"name": "probs"},
            "max_batch_size": 8
        })
    }

    fn two_layer_tensors() -> Vec<(&'static str, Tensor)> {
        vec![
            ("fc1.weight", t2(&[&[1.0, 2.0], &[-1.0, 1.0], &[0.5, 0.0]])),
            ("fc1.bias", t1(&[0.0, 1.0, -1.0])),
            ("fc2.weight", t2(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, -1.0]])),
        ]
    }

    fn fp32(out: &NamedTensor) -> &[f32] {
        let TensorData::Fp32(v) = &out.data else {
            panic!("FP32 output expected, got {}", out.datatype())
        };
        v
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn two_layer_network_matches_hand_computed_values() {
        let folder = Folder::new("two", &two_layer_config(), &two_layer_tensors());
        let model = load_model(DENSE_FORMAT, "m", &folder.0).unwrap();
        let meta = model.metadata();
        assert_eq!(meta.inputs[0].name, "x");
        assert_eq!(meta.inputs[0].shape, [-1, 2]);
        assert_eq!(meta.outputs[0].name, "probs");
        assert_eq!(meta.outputs[0].datatype, "FP32");
        assert_eq!(meta.outputs[0].shape, [-1, 2]);
        assert!(model.batchable());
        // Row [1, 1]: fc1 = [3, 1, -0.5] → relu [3, 1, 0] → fc2 [3, 1] → softmax.
        // Row [-2, 0]: fc1 = [-2, 3, -2] → relu [0, 3, 0] → fc2 [0, 3] → softmax.
        let input = NamedTensor::new("x", vec![2, 2], TensorData::Fp32(vec![1.0, 1.0, -2.0, 0.0]));
        validate_inputs(meta, std::slice::from_ref(&input)).unwrap();
        let out = model.infer(&[input]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "probs");
        assert_eq!(out[0].shape, [2, 2]);
        let e2 = 2f32.exp();
        let e3 = 3f32.exp();
        assert_close(
            fp32(&out[0]),
            &[
                e2 / (e2 + 1.0),
                1.0 / (e2 + 1.0),
                1.0 / (1.0 + e3),
                e3 / (1.0 + e3),
            ],
        );
        let too_many = NamedTensor::new("x", vec![9, 2], TensorData::Fp32(vec![0.0; 18]));
        assert!(
            model
                .infer(&[too_many])
                .unwrap_err()
                .to_string()
                .contains("max batch size 8")
        );
    }

    #[test]
    fn each_activation_matches_hand_computed_values() {
        let xs = [-1.0f32, 0.0, 0.5, 1.0];
        let cases: [(&str, [f32; 4]); 6] = [
            ("relu", [0.0, 0.0, 0.5, 1.0]),
            ("tanh", [-0.761_594_2, 0.0, 0.462_117_2, 0.761_594_2]),
            ("sigmoid", [0.268_941_4, 0.5, 0.622_459_3, 0.731_058_6]),
            // x·Φ(x), Φ the normal CDF.
            ("gelu", [-0.158_655_3, 0.0, 0.345_731_1, 0.841_344_7]),
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
            ("gelu_tanh", [-0.158_808, 0.0, 0.345_714, 0.841_192]),
            // exp(x_i) / Σ exp(x_j) over the row.
            ("softmax", [0.064_147_7, 0.174_371_5, 0.287_49, 0.473_990_8]),
        ];
        for (activation, want) in cases {
            let config = json!({
                "input": {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                "layers": [{"type": "dense", "weight": "eye"}, {"type": activation}]
            });
            let eye = Tensor::eye(4, candle_core::DType::F32, &Device::Cpu).unwrap();
            let folder = Folder::new(activation, &config, &[("eye", eye)]);
            let model = load_model(DENSE_FORMAT, "m", &folder.0).unwrap();
            assert_eq!(model.metadata().outputs[0].name, DEFAULT_OUTPUT);
            let out = model
                .infer(&[NamedTensor::new(
                    "x",
                    vec![1, 4],
                    TensorData::Fp32(xs.to_vec()),
                )])
                .unwrap();
            let got = fp32(&out[0]);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{activation}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn other_numeric_input_datatypes_are_computed_in_fp32() {
        let mut config = two_layer_config();
        config["input"]["datatype"] = json!("INT32");
        let folder = Folder::new("int", &config, &two_layer_tensors());
        let model = load_model(DENSE_FORMAT, "m", &folder.0).unwrap();
        assert_eq!(model.metadata().inputs[0].datatype, "INT32");
        let out = model
            .infer(&[NamedTensor::new(
                "x",
                vec![1, 2],
                TensorData::Int32(vec![1, 1]),
            )])
            .unwrap();
        let e2 = 2f32.exp();
        assert_close(fp32(&out[0]), &[e2 / (e2 + 1.0), 1.0 / (e2 + 1.0)]);
    }

    /// A change to a good config that makes it bad.
    type ConfigEdit = Box<dyn Fn(&mut Value)>;
    /// The tensors written to a test model's file.
    type Tensors = Vec<(&'static str, Tensor)>;

    /// Loads a folder and returns the whole error chain.
    fn load_error(tag: &str, config: &Value, tensors: &[(&str, Tensor)]) -> String {
        let folder = Folder::new(tag, config, tensors);
        match load_model(DENSE_FORMAT, "m", &folder.0) {
            Ok(_) => panic!("{tag}: loaded, expected an error"),
            Err(e) => sluice_core::error_chain(&e),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let tensors = two_layer_tensors();
        let cases: Vec<(&str, ConfigEdit, &str)> = vec![
            (
                "activation",
                Box::new(|c| c["layers"][1]["type"] = json!("swish")),
                "layers[1].type: unknown variant `swish`",
            ),
            (
                "field",
                Box::new(|c| c["layers"][0]["weights"] = json!("w")),
                "layers[0]: unknown field `weights`",
            ),
            (
                "missing-input",
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("input");
                }),
                "missing field `input`",
            ),
            (
                "datatype",
                Box::new(|c| c["input"]["datatype"] = json!("BYTES")),
                "input.datatype \"BYTES\" is not a numeric tensor datatype",
            ),
            (
                "datatype-unknown",
                Box::new(|c| c["input"]["datatype"] = json!("FLOAT")),
                "input.datatype \"FLOAT\" is not a numeric tensor datatype",
            ),
            (
                "shape",
                Box::new(|c| c["input"]["shape"] = json!([2, 2])),
                "input.shape [2, 2] must be [-1, features]",
            ),
            (
                "shape-type",
                Box::new(|c| c["input"]["shape"] = json!("2")),
                "input.shape: invalid type: string \"2\"",
            ),
            (
                "no-dense",
                Box::new(|c| c["layers"] = json!([{"type": "relu"}])),
                "layers must hold at least one dense layer",
            ),
            (
                "output",
                Box::new(|c| c["output"]["name"] = json!("")),
                "output.name must not be empty",
            ),
            (
                "batch",
                Box::new(|c| c["max_batch_size"] = json!(0)),
                "max_batch_size must be > 0",
            ),
        ];
        for (tag, edit, want) in cases {
            let mut config = two_layer_config();
            edit(&mut config);
            let err = load_error(tag, &config, &tensors);
            assert!(err.starts_with("invalid model config "), "{tag}: {err}");
            assert!(err.contains(CONFIG_FILE), "{tag}: {err}");
            assert!(err.contains(want), "{tag}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn tensor_errors_name_the_layer_field_and_tensor() {
        let fc1w = || t2(&[&[1.0, 2.0], &[-1.0, 1.0], &[0.5, 0.0]]);
        let fc1b = || t1(&[0.0, 1.0, -1.0]);
        let fc2w = || t2(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, -1.0]]);
        let cases: Vec<(&str, Tensors, &str)> = vec![
            (
                "missing-weight",
                vec![("fc1.weight", fc1w()), ("fc1.bias", fc1b())],
                "layers[2].weight: tensor \"fc2.weight\" is not in model.safetensors",
            ),
            (
                "missing-bias",
                vec![("fc1.weight", fc1w()), ("fc2.weight", fc2w())],
                "layers[0].bias: tensor \"fc1.bias\" is not in model.safetensors",
            ),
            (
                "weight-in",
                vec![
                    ("fc1.weight", t2(&[&[1.0, 2.0, 3.0]])),
                    ("fc1.bias", t1(&[0.0])),
                    ("fc2.weight", fc2w()),
                ],
                "layers[0].weight: tensor \"fc1.weight\" has shape [1, 3], expected [out, 2]",
            ),
            (
                "weight-chain",
                vec![
                    ("fc1.weight", fc1w()),
                    ("fc1.bias", fc1b()),
                    ("fc2.weight", t2(&[&[1.0, 0.0], &[0.0, 1.0]])),
                ],
                "layers[2].weight: tensor \"fc2.weight\" has shape [2, 2], expected [out, 3]",
            ),
            (
                "weight-rank",
                vec![
                    ("fc1.weight", t1(&[1.0, 2.0])),
                    ("fc1.bias", fc1b()),
                    ("fc2.weight", fc2w()),
                ],
                "layers[0].weight: tensor \"fc1.weight\" has shape [2], expected [out, 2]",
            ),
            (
                "bias-shape",
                vec![
                    ("fc1.weight", fc1w()),
                    ("fc1.bias", t1(&[0.0, 1.0])),
                    ("fc2.weight", fc2w()),
                ],
                "layers[0].bias: tensor \"fc1.bias\" has shape [2], expected [3]",
            ),
        ];
        for (tag, tensors, want) in cases {
            let err = load_error(tag, &two_layer_config(), &tensors);
            assert!(err.starts_with("invalid weights "), "{tag}: {err}");
            assert!(err.contains(want), "{tag}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("sluice-dense-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = sluice_core::error_chain(&Dense::load("m", &dir).unwrap_err());
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(dir.join(CONFIG_FILE), two_layer_config().to_string()).unwrap();
        let err = sluice_core::error_chain(&Dense::load("m", &dir).unwrap_err());
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
