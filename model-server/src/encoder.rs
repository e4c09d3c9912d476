//! `encoder`: the BERT encoder on the CPU, on `sluice-kernels`.
//!
//! What it does differently from candle-transformers' `BertModel` (which still runs every
//! other device, and the CPU when a model needs an op these kernels lack):
//! * Weights packed once at load for the linear layers. candle's matmul (gemm) re-packs the
//!   weight matrix on every call, which for one short sentence costs as much as the
//!   arithmetic; the packed kernel adds the bias (and GELU) in its epilogue.
//! * No padding. The batch is the tokens of every sentence one after another; the linear
//!   layers see `tokens x hidden`, and attention runs per sentence, so a batch costs the
//!   tokens it has, not `sentences x longest`.
//! * One product for the query, key and value projections (weights concatenated).
//! * Weights read tensor by tensor from the safetensors file (`weights::SafetensorsFile`),
//!   not mapped: the peak memory of a load is the weights, not the weights plus the
//!   file's pages.
//! * Each op between the products is one fused pass compiled for the CPU's vector
//!   instructions, on the calling thread when the batch is small; candle's elementwise
//!   ops would each allocate, and hand large ones to a spinning thread pool of their own.

use std::ops::Range;

use candle_core::Device;
use candle_transformers::models::bert::{Config, HiddenAct};
use sluice_kernels::{Epilogue, PackedMatrix, Table, linear};

use crate::model::LoadError;
use crate::weights::SafetensorsFile;

/// Why a model cannot run on these kernels (it then runs on candle-transformers' model).
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    /// The activation is not the exact (erf) GELU.
    #[error("hidden_act {0:?} (these kernels implement the exact GELU)")]
    Activation(HiddenAct),
    /// The weights are not on the CPU.
    #[error("the weights are not on the CPU")]
    Device,
    /// The caller asked for candle-transformers' model.
    #[error("candle-transformers' model was asked for")]
    Chosen,
}

/// A linear layer: packed weights and bias.
struct Linear {
    weight: PackedMatrix,
    bias: Vec<f32>,
}

impl Linear {
    fn apply(&self, x: &[f32], epilogue: Epilogue) -> Vec<f32> {
        let rows = x.len() / self.weight.k();
        let mut out = vec![0f32; rows * self.weight.n()];
        linear(x, &self.weight, &self.bias, epilogue, &mut out);
        out
    }
}

/// One encoder layer's weights.
struct Layer {
    /// Query, key and value projections, concatenated: `3 * hidden` outputs.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: (Vec<f32>, Vec<f32>),
    intermediate: Linear,
    output: Linear,
    output_norm: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder with mean pooling, on the CPU.
pub struct CpuEncoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    eps: f32,
}

/// One tokenized sentence.
pub struct Sentence<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Token type (segment) ids, as many as `ids`.
    pub types: &'a [u32],
}

/// The tensors under one name prefix of a safetensors file.
struct Weights<'a> {
    file: &'a mut SafetensorsFile,
    prefix: String,
}

impl Weights<'_> {
    fn at(&mut self, name: &str) -> Weights<'_> {
        Weights {
            prefix: format!("{}{name}.", self.prefix),
            file: &mut *self.file,
        }
    }

    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        self.file.read_f32(&format!("{}{name}", self.prefix), shape)
    }

    /// A layer norm's scale and shift.
    fn norm(&mut self, width: usize) -> Result<(Vec<f32>, Vec<f32>), LoadError> {
        Ok((self.get("weight", &[width])?, self.get("bias", &[width])?))
    }

    /// The linear layers `names` (each `n x k`), stacked into one and packed.
    fn linear(&mut self, names: &[&str], n: usize, k: usize) -> Result<Linear, LoadError> {
        let mut weight = Vec::with_capacity(names.len() * n * k);
        let mut bias = Vec::with_capacity(names.len() * n);
        for name in names {
            weight.extend(self.get(&format!("{name}.weight"), &[n, k])?);
            bias.extend(self.get(&format!("{name}.bias"), &[n])?);
        }
        Ok(Linear {
            weight: PackedMatrix::pack(&weight, names.len() * n, k),
            bias,
        })
    }
}

impl CpuEncoder {
    /// Whether these kernels can run a model with `config` on `device`.
    pub fn supports(config: &Config, device: &Device) -> Result<(), Unsupported> {
        if !matches!(config.hidden_act, HiddenAct::Gelu) {
            return Err(Unsupported::Activation(config.hidden_act));
        }
        if !matches!(device, Device::Cpu) {
            return Err(Unsupported::Device);
        }
        Ok(())
    }

    /// Builds the encoder from BERT weights (Hugging Face names, with or without a `bert.`
    /// or `{model_type}.` prefix, as candle-transformers accepts them).
    pub fn load(file: &mut SafetensorsFile, config: &Config) -> Result<Self, LoadError> {
        let word_key = "embeddings.word_embeddings.weight";
        let prefix = if file.contains(word_key) {
            String::new()
        } else if file.contains(&format!("bert.{word_key}")) {
            "bert.".to_owned()
        } else {
            config
                .model_type
                .as_ref()
                .map(|t| format!("{t}."))
                .unwrap_or_default()
        };
        let mut w = Weights { file, prefix };
        let h = config.hidden_size;
        let mut emb = w.at("embeddings");
        let word = emb.get("word_embeddings.weight", &[config.vocab_size, h])?;
        let position = emb.get(
            "position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = emb.get("token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        let embed_norm = emb.at("LayerNorm").norm(h)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(&mut w.at(&format!("encoder.layer.{i}")), config))
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
        })
    }

    /// Mean-pooled sentence embeddings, `[sentences.len(), hidden]` row-major, each row
    /// scaled to unit length with `normalize`.
    pub fn pooled(
        &self,
        sentences: &[Sentence<'_>],
        normalize: bool,
    ) -> candle_core::Result<Vec<f32>> {
        let h = self.hidden;
        let mut seqs: Vec<Range<usize>> = Vec::with_capacity(sentences.len());
        let (mut ids, mut positions, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for s in sentences {
            let start = ids.len();
            if s.types.len() != s.ids.len() {
                return Err(candle_core::Error::Msg(format!(
                    "{} token types for {} token ids",
                    s.types.len(),
                    s.ids.len()
                )));
            }
            ids.extend_from_slice(s.ids);
            types.extend_from_slice(s.types);
            positions.extend(0..s.ids.len() as u32);
            seqs.push(start..ids.len());
        }
        let mut x = vec![0f32; ids.len() * h];
        sluice_kernels::embed_layer_norm(
            Table {
                data: &self.word,
                indexed_by: "input_ids",
            },
            Table {
                data: &self.position,
                indexed_by: "position_ids",
            },
            Table {
                data: &self.token_type,
                indexed_by: "token_type_ids",
            },
            &ids,
            &positions,
            &types,
            &self.embed_norm.0,
            &self.embed_norm.1,
            self.eps,
            &mut x,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &seqs);
        }
        let mut out = vec![0f32; sentences.len() * h];
        sluice_kernels::mean_pool(&x, h, &seqs, normalize, &mut out);
        Ok(out)
    }

    fn layer(&self, l: &Layer, x: &[f32], seqs: &[Range<usize>]) -> Vec<f32> {
        let qkv = l.qkv.apply(x, Epilogue::Bias);
        let mut ctx = vec![0f32; x.len()];
        sluice_kernels::attention(&qkv, self.hidden, seqs, self.heads, &mut ctx);
        let projected = l.attn_out.apply(&ctx, Epilogue::Bias);
        let attended = self.add_and_norm(&projected, x, &l.attn_norm);
        let up = l.intermediate.apply(&attended, Epilogue::BiasGelu);
        let down = l.output.apply(&up, Epilogue::Bias);
        self.add_and_norm(&down, &attended, &l.output_norm)
    }

    /// `layer_norm(input + residual)` (the bias is already in `input`).
    fn add_and_norm(
        &self,
        input: &[f32],
        residual: &[f32],
        (gamma, beta): &(Vec<f32>, Vec<f32>),
    ) -> Vec<f32> {
        let mut out = vec![0f32; input.len()];
        sluice_kernels::residual_layer_norm(input, residual, gamma, beta, self.eps, &mut out);
        out
    }
}

impl Layer {
    fn load(w: &mut Weights<'_>, config: &Config) -> Result<Self, LoadError> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut attn = w.at("attention");
        Ok(Self {
            qkv: attn.at("self").linear(&["query", "key", "value"], h, h)?,
            attn_out: attn.at("output").linear(&["dense"], h, h)?,
            attn_norm: attn.at("output.LayerNorm").norm(h)?,
            intermediate: w.at("intermediate").linear(&["dense"], i, h)?,
            output: w.at("output").linear(&["dense"], h, i)?,
            output_norm: w.at("output.LayerNorm").norm(h)?,
        })
    }
}
