//! `sluice-mlp`: a small multi-layer perceptron classifier on candle.
//!
//! A model folder holds `config.json` (input name and width, hidden layer widths, class
//! names, feature normalization) and `model.safetensors` with `layers.{i}.weight` /
//! `layers.{i}.bias`. Outputs: `output-0`, the predicted class index per row (INT64, as
//! KServe's sklearn server answers for iris), and `probabilities` (FP32, softmax).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::InferError;
use crate::model::{LoadError, Model, ModelMetadata, TensorMetadata};
use crate::tensor::{NamedTensor, TensorData};

/// The config file in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Output holding the class index.
pub const CLASS_OUTPUT: &str = "output-0";
/// Output holding the class probabilities.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";

/// `config.json` of a `sluice-mlp` model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Name of the single input tensor.
    pub input_name: String,
    /// Features per row.
    pub features: usize,
    /// Hidden layer widths (ReLU after each).
    pub hidden: Vec<usize>,
    /// Class names; the output layer has one unit per class.
    pub classes: Vec<String>,
    /// Per-feature mean subtracted before the first layer.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation divided by before the first layer.
    pub std: Vec<f32>,
    /// Most rows accepted in one request.
    #[serde(default = "default_max_batch")]
    pub max_batch_size: usize,
}

fn default_max_batch() -> usize {
    4096
}

impl MlpConfig {
    fn validate(&self) -> Result<(), String> {
        if self.features == 0 || self.classes.len() < 2 {
            return Err("features must be > 0 and classes must name at least two".into());
        }
        if self.mean.len() != self.features || self.std.len() != self.features {
            return Err(format!(
                "mean and std must have {} entries each",
                self.features
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("std entries must be finite and > 0".into());
        }
        if self.hidden.contains(&0) {
            return Err("hidden layer widths must be > 0".into());
        }
        Ok(())
    }

    /// Layer widths from input to output.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.features];
        w.extend(&self.hidden);
        w.push(self.classes.len());
        w
    }
}

/// The network itself, usable for inference and (in the training example) for training.
#[derive(Debug)]
pub struct MlpNet {
    layers: Vec<Linear>,
    mean: Tensor,
    std: Tensor,
}

impl MlpNet {
    /// Builds the layers from `vb` (`layers.{i}.weight`, `layers.{i}.bias`).
    pub fn new(config: &MlpConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let widths = config.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let device = vb.device();
        Ok(Self {
            layers,
            mean: Tensor::new(config.mean.as_slice(), device)?,
            std: Tensor::new(config.std.as_slice(), device)?,
        })
    }

    /// Logits for a `[batch, features]` input.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// A loaded `sluice-mlp` model.
#[derive(Debug)]
pub struct Mlp {
    config: MlpConfig,
    net: MlpNet,
    metadata: ModelMetadata,
}

impl Mlp {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: MlpConfig = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| LoadError::Config {
            path: config_path.clone(),
            message,
        })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights_err = |source| LoadError::Weights {
            path: weights_path.clone(),
            source,
        };
        let device = Device::Cpu;
        let vb = crate::weights::map_file(&weights_path, &device)?;
        let net = MlpNet::new(&config, vb).map_err(weights_err)?;
        Ok(Self::from_parts(name, config, net))
    }

    /// Wraps an already-built network.
    pub fn from_parts(name: &str, config: MlpConfig, net: MlpNet) -> Self {
        let metadata = ModelMetadata {
            name: name.to_owned(),
            versions: Vec::new(),
            platform: "sluice-candle".to_owned(),
            inputs: vec![TensorMetadata {
                name: config.input_name.clone(),
                datatype: "FP32".to_owned(),
                shape: vec![-1, config.features as i64],
            }],
            outputs: vec![
                TensorMetadata {
                    name: CLASS_OUTPUT.to_owned(),
                    datatype: "INT64".to_owned(),
                    shape: vec![-1],
                },
                TensorMetadata {
                    name: PROBABILITIES_OUTPUT.to_owned(),
                    datatype: "FP32".to_owned(),
                    shape: vec![-1, config.classes.len() as i64],
                },
            ],
        };
        Self {
            config,
            net,
            metadata,
        }
    }

    /// The model's config.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }
}

impl Model for Mlp {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError> {
        let features = self.config.features;
        let [input] = inputs else {
            return Err(InferError::InvalidInput {
                tensor: self.config.input_name.clone(),
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
        let TensorData::Fp32(data) = &input.data else {
            return Err(input.invalid(format!(
                "datatype is {}, the model expects FP32",
                input.datatype()
            )));
        };
        let x = Tensor::from_slice(data.as_slice(), (rows, features), &Device::Cpu)?;
        let logits = self.net.logits(&x)?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let classes = probabilities.argmax(D::Minus1)?.to_dtype(DType::I64)?;
        Ok(vec![
            NamedTensor::new(
                CLASS_OUTPUT,
                vec![rows],
                TensorData::Int64(classes.to_vec1::<i64>()?),
            ),
            NamedTensor::new(
                PROBABILITIES_OUTPUT,
                vec![rows, self.config.classes.len()],
                TensorData::Fp32(probabilities.flatten_all()?.to_vec1::<f32>()?),
            ),
        ])
    }

    fn batchable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate_inputs;

    fn zero_model() -> Mlp {
        let config = MlpConfig {
            input_name: "input-0".into(),
            features: 4,
            hidden: vec![8],
            classes: vec!["a".into(), "b".into(), "c".into()],
            mean: vec![0.0; 4],
            std: vec![1.0; 4],
            max_batch_size: 2,
        };
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let net = MlpNet::new(&config, vb).unwrap();
        Mlp::from_parts("m", config, net)
    }

    fn input(name: &str, shape: Vec<usize>, data: TensorData) -> Vec<NamedTensor> {
        vec![NamedTensor::new(name, shape, data)]
    }

    #[test]
    fn zero_weights_give_uniform_probabilities() {
        let m = zero_model();
        let out = m
            .infer(&input(
                "input-0",
                vec![1, 4],
                TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]),
            ))
            .unwrap();
        let TensorData::Fp32(p) = &out[1].data else {
            panic!("fp32 expected")
        };
        for x in p {
            assert!((x - 1.0 / 3.0).abs() < 1e-6);
        }
    }

    #[test]
    fn shape_batch_and_name_errors_name_the_tensor() {
        let m = zero_model();
        let bad_shape = input("input-0", vec![1, 3], TensorData::Fp32(vec![1.0; 3]));
        assert_eq!(
            validate_inputs(m.metadata(), &bad_shape)
                .unwrap_err()
                .to_string(),
            "input \"input-0\": shape [1, 3] does not match the model's [-1, 4]"
        );
        let too_many = input("input-0", vec![3, 4], TensorData::Fp32(vec![1.0; 12]));
        assert!(
            m.infer(&too_many)
                .unwrap_err()
                .to_string()
                .contains("max batch size 2")
        );
        let wrong_name = input("x", vec![1, 4], TensorData::Fp32(vec![1.0; 4]));
        assert_eq!(
            validate_inputs(m.metadata(), &wrong_name)
                .unwrap_err()
                .to_string(),
            "input \"x\": unknown input; the model's inputs are [\"input-0\"]"
        );
        let fp64 = input("input-0", vec![1, 4], TensorData::Fp64(vec![1.0; 4]));
        assert_eq!(
            validate_inputs(m.metadata(), &fp64)
                .unwrap_err()
                .to_string(),
            "input \"input-0\": datatype is FP64, the model expects FP32"
        );
        assert_eq!(
            validate_inputs(m.metadata(), &[]).unwrap_err().to_string(),
            "input \"input-0\": required input is missing"
        );
    }
}
