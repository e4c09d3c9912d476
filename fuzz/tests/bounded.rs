//! The bounded fuzz pass CI runs: every target over its committed corpus, then a fixed
//! number of mutated inputs from a fixed seed (the same inputs on every run). Fails on any
//! panic or allocation over the limit, printing the target and the input as hex (replay it
//! with `cargo run -p sluice-fuzz -- reproduce --target T --hex H`). The long run is
//! `bench/fuzz/run`.

use std::path::Path;

use sluice_fuzz::runner::{hex, load_corpus};
use sluice_fuzz::{ALL, Budget, Options};

/// Mutated inputs per target: sized so that the whole pass takes well under 30 s in the
/// dev profile on a 2-core machine.
const MUTATED_INPUTS: u64 = 20_000;
const SEED: u64 = 0x5111_CE00_0000_0014;

#[test]
fn every_decoder_survives_its_corpus_and_mutated_inputs() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let crashes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    let options = Options {
        seed: SEED,
        budget: Budget::Inputs(MUTATED_INPUTS),
        crash_dir: Some(crashes),
        pool_limit: 1024,
    };
    let mut failures = Vec::new();
    for target in ALL {
        let entries = load_corpus(&corpus.join(target.name)).expect("the corpus is readable");
        assert!(!entries.is_empty(), "{}: the corpus is empty", target.name);
        let report = sluice_fuzz::run(target, &entries, &options).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{:<16} {:>3} corpus + {} mutated = {} inputs in {:.2} s, {} outcomes, {} new, \
             largest allocation {} bytes",
            target.name,
            report.corpus,
            MUTATED_INPUTS,
            report.inputs,
            report.elapsed.as_secs_f64(),
            report.outcomes,
            report.new_inputs,
            report.largest_allocation.0,
        );
        for f in &report.findings {
            failures.push(format!(
                "{}: {}\n  input ({} bytes): {}",
                target.name,
                f.failure,
                f.input.len(),
                hex(&f.input)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The committed gRPC seeds are the messages `grpc_seed_requests` builds, so they reach the
/// conversion (a stale seed would stop at the protobuf decoder).
#[test]
fn the_grpc_corpus_decodes() {
    use prost::Message;
    use sluice_model_server::grpc::inference::ModelInferRequest;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/grpc-infer");
    for (name, request) in sluice_fuzz::targets::grpc_seed_requests() {
        let bytes = std::fs::read(dir.join(format!("{name}.bin"))).expect("the seed is committed");
        let decoded = ModelInferRequest::decode(bytes.as_slice()).expect("the seed decodes");
        assert_eq!(decoded, request, "{name}: regenerate with write-grpc-seeds");
    }
}
