//! `bert`: sentence embeddings from a BERT encoder (e.g. all-MiniLM-L6-v2) on candle.
//!
//! A model folder holds Hugging Face's `config.json`, `tokenizer.json` and
//! `model.safetensors`. Input `text` (BYTES, one UTF-8 sentence per row) is tokenized with
//! the `tokenizers` crate, run through the encoder, mean-pooled over the sentence's tokens
//! and L2-normalized, as sentence-transformers does. Output `embedding` is FP32
//! `[batch, hidden]`.
//!
//! On the CPU the encoder is `encoder::CpuEncoder` (candle's matrix products with the
//! fused, vectorized `sluice-kernels` between them, no padding); on a GPU, or for a model
//! those kernels do not cover, it is candle-transformers' `BertModel` over a padded batch.

use std::path::Path;

use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::encoder::{CpuEncoder, Sentence};
use crate::error::InferError;
use crate::model::{LoadError, Model, ModelMetadata, TextEmbedder, Token, tensor_meta};
use crate::tensor::{DataType, NamedTensor, TensorData};

/// The `modelFormat` name.
pub const BERT_FORMAT: &str = "bert";
/// Input holding the sentences.
pub const TEXT_INPUT: &str = "text";
/// Output holding the embeddings.
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// Longest token sequence (sentence-transformers' `max_seq_length` for MiniLM).
pub const MAX_TOKENS: usize = 256;

/// One text's token ids and type ids, cut to `MAX_TOKENS`.
struct Tokens {
    ids: Vec<u32>,
    types: Vec<u32>,
}

impl Tokens {
    /// At most `MAX_TOKENS`, as the tokenizer's own truncation cuts a single text: the
    /// leading `[CLS]` and first tokens, then the closing `[SEP]`.
    fn cut(e: &tokenizers::Encoding) -> Self {
        let (ids, types) = (e.get_ids(), e.get_type_ids());
        let keep = |v: &[u32]| {
            if v.len() <= MAX_TOKENS {
                return v.to_vec();
            }
            let mut kept = v[..MAX_TOKENS - 1].to_vec();
            kept.extend(v.last());
            kept
        };
        Self {
            ids: keep(ids),
            types: keep(types),
        }
    }
}

/// Which encoder implementation runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BertKernels {
    /// Sluice's CPU encoder where it applies (CPU, exact GELU), candle-transformers'
    /// otherwise.
    #[default]
    Auto,
    /// candle-transformers' `BertModel` everywhere (the reference, for comparisons).
    Candle,
}

enum Encoder {
    Cpu(CpuEncoder),
    Candle(BertModel),
}

/// A loaded sentence-embedding model.
pub struct Bert {
    encoder: Encoder,
    /// No padding (the CPU encoder needs none, the candle path pads itself) and no
    /// truncation (token counts are the text's own; `pooled` cuts at `MAX_TOKENS`). One
    /// tokenizer, not two configured copies: each holds the vocabulary (~8 MB).
    tokenizer: Tokenizer,
    pad_id: u32,
    hidden: usize,
    metadata: ModelMetadata,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("name", &self.metadata.name)
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

impl Bert {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Self, LoadError> {
        Self::load_with(name, dir, BertKernels::Auto)
    }

    /// [`Bert::load`] with a choice of encoder implementation.
    pub fn load_with(name: &str, dir: &Path, kernels: BertKernels) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Config = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let hidden = config.hidden_size;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;

        let weights_path = dir.join("model.safetensors");
        let weights_err = |source| LoadError::Weights {
            path: weights_path.clone(),
            source,
        };
        let device = crate::model::compute_device();
        // Say where the model computes: a CUDA build on a machine without a usable GPU
        // falls back to the CPU, and an operator should see that in the log.
        tracing::info!(model = name, device = ?device.location(), "bert model device");
        let cpu = match kernels {
            BertKernels::Auto => CpuEncoder::supports(&config, &device),
            BertKernels::Candle => Err(crate::encoder::Unsupported::Chosen),
        };
        let encoder = match cpu {
            Ok(()) => {
                let mut file = crate::weights::SafetensorsFile::open(&weights_path)?;
                let cpu = CpuEncoder::load(&mut file, &config)?;
                tracing::info!(
                    model = name,
                    kernels = %sluice_kernels::cpu_kernels(),
                    "bert model runs on sluice's CPU kernels"
                );
                Encoder::Cpu(cpu)
            }
            Err(why) => {
                tracing::info!(model = name, %why, "bert model runs on candle-transformers");
                let vb = crate::weights::map_file(&weights_path, &device)?;
                Encoder::Candle(BertModel::load(vb, &config).map_err(weights_err)?)
            }
        };
        let pad_id = u32::try_from(config.pad_token_id).unwrap_or(0);
        let metadata = ModelMetadata {
            name: name.to_owned(),
            versions: Vec::new(),
            platform: "sluice-candle".to_owned(),
            inputs: vec![tensor_meta(TEXT_INPUT, DataType::Bytes, vec![-1])],
            outputs: vec![tensor_meta(
                EMBEDDING_OUTPUT,
                DataType::Fp32,
                vec![-1, hidden as i64],
            )],
        };
        Ok(Self {
            encoder,
            tokenizer,
            pad_id,
            hidden,
            metadata,
        })
    }

    /// Embeds sentences: `[sentences.len(), hidden]`, row-major, each row of unit length.
    pub fn embed(&self, sentences: &[&str]) -> Result<Vec<f32>, InferError> {
        self.pooled(sentences, true)
    }

    /// Mean-pooled embeddings, L2-normalized with `normalize`.
    fn pooled(&self, sentences: &[&str], normalize: bool) -> Result<Vec<f32>, InferError> {
        if sentences.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| InferError::InvalidInput {
                tensor: TEXT_INPUT.into(),
                message: format!("cannot tokenize: {e}"),
            })?;
        let tokens: Vec<Tokens> = encodings.iter().map(Tokens::cut).collect();
        match &self.encoder {
            Encoder::Cpu(cpu) => {
                let sentences: Vec<Sentence<'_>> = tokens
                    .iter()
                    .map(|t| Sentence {
                        ids: &t.ids,
                        types: &t.types,
                    })
                    .collect();
                Ok(cpu.pooled(&sentences, normalize)?)
            }
            Encoder::Candle(model) => self.candle_pooled(model, &tokens, normalize),
        }
    }

    /// candle-transformers' path: pad to the longest sentence, mask, pool.
    fn candle_pooled(
        &self,
        model: &BertModel,
        encodings: &[Tokens],
        normalize: bool,
    ) -> Result<Vec<f32>, InferError> {
        let rows = encodings.len();
        let len = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * len);
        let mut types = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        for e in encodings {
            let pad = len - e.ids.len();
            ids.extend(e.ids.iter().map(|&x| i64::from(x)));
            ids.extend(std::iter::repeat_n(i64::from(self.pad_id), pad));
            types.extend(e.types.iter().map(|&x| i64::from(x)));
            types.extend(std::iter::repeat_n(0, pad));
            mask.extend(std::iter::repeat_n(1, e.ids.len()));
            mask.extend(std::iter::repeat_n(0, pad));
        }
        let device = &model.device;
        let ids = Tensor::from_vec(ids, (rows, len), device)?;
        let types = Tensor::from_vec(types, (rows, len), device)?;
        let mask = Tensor::from_vec(mask, (rows, len), device)?;
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens: sum(h * mask) / sum(mask).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        if !normalize {
            return Ok(mean.flatten_all()?.to_vec1::<f32>()?);
        }
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        let normalized = mean.broadcast_div(&norm)?;
        Ok(normalized.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Width of an embedding.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
}

impl Model for Bert {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError> {
        let [input] = inputs else {
            return Err(InferError::InvalidInput {
                tensor: TEXT_INPUT.into(),
                message: format!("expected exactly one input, got {}", inputs.len()),
            });
        };
        let TensorData::Bytes(items) = &input.data else {
            return Err(input.invalid(format!(
                "datatype is {}, the model expects BYTES",
                input.datatype()
            )));
        };
        let sentences = items
            .iter()
            .enumerate()
            .map(|(i, b)| {
                std::str::from_utf8(b)
                    .map_err(|e| input.invalid(format!("element {i} is not UTF-8 text: {e}")))
            })
            .collect::<Result<Vec<&str>, InferError>>()?;
        let embeddings = self.embed(&sentences)?;
        Ok(vec![NamedTensor::new(
            EMBEDDING_OUTPUT,
            vec![sentences.len(), self.hidden],
            TensorData::Fp32(embeddings),
        )])
    }

    fn batchable(&self) -> bool {
        true
    }

    fn text_embedder(&self) -> Option<&dyn TextEmbedder> {
        Some(self)
    }
}

impl TextEmbedder for Bert {
    fn dimensions(&self) -> usize {
        self.hidden
    }

    fn max_tokens(&self) -> usize {
        MAX_TOKENS
    }

    fn tokenize(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<Token>>, InferError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), add_special_tokens)
            .map_err(|e| InferError::InvalidInput {
                tensor: TEXT_INPUT.into(),
                message: format!("cannot tokenize: {e}"),
            })?;
        Ok(encodings
            .iter()
            .zip(texts)
            .map(|(e, text)| {
                e.get_ids()
                    .iter()
                    .zip(e.get_tokens())
                    .zip(e.get_offsets())
                    .zip(e.get_special_tokens_mask())
                    .map(|(((&id, token), &(start, stop)), &special)| {
                        let special = special == 1;
                        Token {
                            id,
                            text: match text.get(start..stop) {
                                Some(covered) if !special => covered.to_owned(),
                                _ => token.clone(),
                            },
                            special,
                            offsets: (!special).then_some((start, stop)),
                        }
                    })
                    .collect()
            })
            .collect())
    }

    fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, InferError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| InferError::InvalidInput {
                tensor: TEXT_INPUT.into(),
                message: format!("cannot tokenize: {e}"),
            })?;
        Ok(encodings.iter().map(|e| e.get_ids().len()).collect())
    }

    fn embed_texts(&self, texts: &[&str], normalize: bool) -> Result<Vec<f32>, InferError> {
        self.pooled(texts, normalize)
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::TruncationParams;

    use super::*;

    /// Cutting the untruncated encoding gives what the tokenizer's own truncation gives.
    #[test]
    fn cut_matches_the_tokenizers_truncation() {
        let home = std::env::var_os("HOME").expect("HOME is set");
        let path = std::path::PathBuf::from(home)
            .join(".cache/sluice/models/all-MiniLM-L6-v2/tokenizer.json");
        // scripts/test fetches the weights first; the model tests fail without them.
        let mut plain = Tokenizer::from_file(&path).unwrap();
        plain.with_padding(None);
        plain.with_truncation(None).unwrap();
        let mut cutting = plain.clone();
        cutting
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .unwrap();
        let long = "the river bank and the lending bank ".repeat(60);
        for text in ["short", long.as_str()] {
            let ours = Tokens::cut(&plain.encode(text, true).unwrap());
            let theirs = cutting.encode(text, true).unwrap();
            assert_eq!(ours.ids, theirs.get_ids(), "{text:.20}");
            assert_eq!(ours.types, theirs.get_type_ids());
        }
        assert_eq!(
            Tokens::cut(&plain.encode(long.as_str(), true).unwrap())
                .ids
                .len(),
            MAX_TOKENS
        );
    }
}
