//! The model server's embedding bodies: OpenAI's `POST /v1/embeddings` and
//! text-embeddings-inference's `POST /embed` and `/tokenize`. Each input goes through the
//! three decoders the handlers in `model-server/src/embeddings.rs` call first.

use sluice_model_server::embeddings::{decode_openai, decode_tei_embed, decode_tei_tokenize};

use super::target::{Target, nothing_to_prepare, outcome};

/// Field names and values of the three bodies.
const DICTIONARY: &[&str] = &[
    "\"input\"",
    "\"inputs\"",
    "\"model\"",
    "\"encoding_format\"",
    "\"float\"",
    "\"base64\"",
    "\"dimensions\"",
    "\"user\"",
    "\"normalize\"",
    "\"truncate\"",
    "\"truncation_direction\"",
    "\"Right\"",
    "\"Left\"",
    "\"prompt_name\"",
    "\"add_special_tokens\"",
    "\"minilm\"",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[[",
    "]]",
    "\"\"",
    "384",
    "-1",
    "1e999",
    ",",
    ":",
    "\\u0000",
    "\\ud800",
];

/// The three embedding bodies.
pub const EMBEDDINGS: Target = Target {
    name: "embeddings",
    about: "embedding API bodies: embeddings::decode_openai, decode_tei_embed, \
            decode_tei_tokenize",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: nothing_to_prepare,
    run: |input| {
        format!(
            "{} | {} | {}",
            outcome(&decode_openai(input)),
            outcome(&decode_tei_embed(input)),
            outcome(&decode_tei_tokenize(input)),
        )
    },
};
