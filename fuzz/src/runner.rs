//! The runner: every corpus entry, then mutated inputs until the budget is spent, each
//! through one target under `catch_unwind` and the allocation watch.
//!
//! There is no coverage feedback on stable Rust. What stands in for it: each input's
//! outcome (the decoder's answer, usually an error message, coarsened to its first letters
//! outside quotes) is hashed, and an input with an outcome not seen before joins the pool
//! later inputs are mutated from. Distinct error messages come from distinct checks, so the
//! pool drifts toward inputs that get past the early ones; half the inputs still start from
//! the corpus.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use tokio::time::Instant;

use crate::alloc::{self, ALLOCATION_LIMIT};
use crate::mutate::Mutator;
use crate::targets::Target;

/// How long a run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// This many mutated inputs after the corpus.
    Inputs(u64),
    /// Mutated inputs until this much time has passed (the corpus always runs whole).
    Time(Duration),
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seeds the mutation stream (the same seed replays the same inputs).
    pub seed: u64,
    /// How long to run.
    pub budget: Budget,
    /// Where findings are written (`<dir>/<target>/<kind>-<hash>.bin`); `None`: not saved.
    pub crash_dir: Option<PathBuf>,
    /// Most inputs kept for mutation (corpus included).
    pub pool_limit: usize,
}

/// What went wrong on one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The decoder panicked (the message and where).
    Panic(String),
    /// The decoder asked for more than [`ALLOCATION_LIMIT`] bytes at once.
    Allocation(usize),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Allocation(n) => write!(
                f,
                "one allocation of {n} bytes (limit {ALLOCATION_LIMIT} bytes)"
            ),
        }
    }
}

/// An input that made a target fail.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What happened.
    pub failure: Failure,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was saved, if it was.
    pub saved: Option<PathBuf>,
}

/// Most findings kept per run (the count goes on).
const MAX_FINDINGS: usize = 16;

/// What one run of one target did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Inputs tried, corpus included.
    pub inputs: u64,
    /// Corpus entries among them.
    pub corpus: usize,
    /// Distinct outcomes seen (at most [`MAX_OUTCOMES`] are remembered).
    pub outcomes: usize,
    /// Mutated inputs that joined the pool (a new outcome).
    pub new_inputs: usize,
    /// Time taken.
    pub elapsed: Duration,
    /// The largest single allocation any input caused, and that input's length.
    pub largest_allocation: (usize, usize),
    /// Inputs that failed (at most [`MAX_FINDINGS`]; `failures` counts all).
    pub findings: Vec<Finding>,
    /// Failing inputs, all of them.
    pub failures: u64,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// Set while this thread runs a target: its panics are captured, not printed.
    static CAPTURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Makes panics inside a target quiet and captured (other panics print as before).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let message = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string payload)".to_owned());
                        *slot = match info.location() {
                            Some(l) => format!("{message} at {}:{}", l.file(), l.line()),
                            None => message,
                        };
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs one input through `target`: its outcome, or why it failed; and the largest single
/// allocation it caused.
pub fn run_one(target: &Target, input: &[u8]) -> (Result<String, Failure>, usize) {
    install_panic_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    alloc::arm();
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let largest = alloc::disarm();
    let message = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let result = match result {
        Err(_) => Err(Failure::Panic(message)),
        Ok(_) if largest > ALLOCATION_LIMIT => Err(Failure::Allocation(largest)),
        Ok(outcome) => Ok(outcome),
    };
    (result, largest)
}

/// The files of a corpus folder, by name; a missing folder is an empty corpus.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    paths.retain(|p| p.is_file());
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}

/// Most distinct outcomes remembered (and so most new inputs kept) per run.
const MAX_OUTCOMES: usize = 1 << 16;

/// FNV-1a over an outcome's first 32 letters, quoted text (`"…"`, `` `…` ``) left out: the
/// lengths, positions and echoed values in error messages would make every input look new.
/// Coarse on purpose: what is left is mostly which check answered.
fn outcome_key(outcome: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut quoted = false;
    let letters = outcome.bytes().filter(|&b| {
        if b == b'"' || b == b'`' {
            quoted = !quoted;
        }
        !quoted && b.is_ascii_alphabetic()
    });
    for b in letters.take(32) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes from hex (whitespace ignored); `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn save(dir: &Path, target: &str, failure: &Failure, input: &[u8]) -> Option<PathBuf> {
    let kind = match failure {
        Failure::Panic(_) => "panic",
        Failure::Allocation(_) => "alloc",
    };
    let folder = dir.join(target);
    std::fs::create_dir_all(&folder).ok()?;
    let path = folder.join(format!("{kind}-{:016x}.bin", outcome_key(&hex(input))));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// Runs `target` over `corpus`, then over mutated inputs until `options.budget` is spent.
/// Fails, before any input, when the target's fixture cannot be built.
pub fn run(target: &Target, corpus: &[Vec<u8>], options: &Options) -> Result<Report, String> {
    (target.prepare)().map_err(|e| format!("{}: its fixture cannot be built: {e}", target.name))?;
    let started = Instant::now();
    let mut report = Report {
        target: target.name,
        inputs: 0,
        corpus: corpus.len(),
        outcomes: 0,
        new_inputs: 0,
        elapsed: Duration::ZERO,
        largest_allocation: (0, 0),
        findings: Vec::new(),
        failures: 0,
    };
    let mut seen = HashSet::new();
    let mut pool: Vec<Vec<u8>> = corpus.iter().take(options.pool_limit).cloned().collect();
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    // A different stream per target under one seed.
    let mut mutator = Mutator::new(
        options.seed ^ outcome_key(target.name),
        target.dictionary,
        target.max_len,
    );
    let mut record = |input: &[u8], report: &mut Report| -> bool {
        let (result, largest) = run_one(target, input);
        report.inputs += 1;
        if largest > report.largest_allocation.0 {
            report.largest_allocation = (largest, input.len());
        }
        match result {
            Ok(outcome) => seen.len() < MAX_OUTCOMES && seen.insert(outcome_key(&outcome)),
            Err(failure) => {
                report.failures += 1;
                let repeat = report.findings.iter().any(|f| f.failure == failure);
                if !repeat && report.findings.len() < MAX_FINDINGS {
                    let saved = options
                        .crash_dir
                        .as_deref()
                        .and_then(|d| save(d, target.name, &failure, input));
                    report.findings.push(Finding {
                        failure,
                        input: input.to_vec(),
                        saved,
                    });
                }
                false
            }
        }
    };
    for input in corpus {
        record(input.as_slice(), &mut report);
    }
    let mut mutated = 0u64;
    loop {
        match options.budget {
            Budget::Inputs(n) if mutated >= n => break,
            Budget::Time(limit) if mutated.is_multiple_of(64) && started.elapsed() >= limit => {
                break;
            }
            _ => {}
        }
        // Half the inputs start from the corpus, so the valid seeds are never crowded out
        // by the inputs that joined the pool.
        let rng = mutator.rng();
        let from = if rng.one_in(2) {
            corpus.len().clamp(1, pool.len())
        } else {
            pool.len()
        };
        let (a, b) = (rng.below(from), rng.below(pool.len()));
        let input = mutator.mutate(&pool[a], &pool[b]);
        mutated += 1;
        if record(&input, &mut report) {
            report.new_inputs += 1;
            if pool.len() < options.pool_limit {
                pool.push(input);
            } else {
                // Full: a new input replaces a random one past the corpus.
                let keep = corpus.len().min(pool.len() - 1);
                let i = keep + mutator.rng().below(pool.len() - keep);
                pool[i] = input;
            }
        }
    }
    report.outcomes = seen.len();
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics_on_bang(input: &[u8]) -> String {
        assert!(!input.contains(&b'!'), "a bang");
        format!("{} bytes", input.len())
    }

    fn allocates(input: &[u8]) -> String {
        if input.first() == Some(&b'A') {
            let v: Vec<u8> = Vec::with_capacity(ALLOCATION_LIMIT + 1);
            return v.capacity().to_string();
        }
        String::new()
    }

    fn target(run: fn(&[u8]) -> String) -> Target {
        Target {
            name: "test",
            about: "",
            dictionary: &["!"],
            max_len: 64,
            prepare: || Ok(()),
            run,
        }
    }

    #[test]
    fn a_fixture_that_cannot_be_built_stops_the_run_before_any_input() {
        let mut broken = target(|_| String::new());
        broken.prepare = || Err("no model".into());
        let options = Options {
            seed: 1,
            budget: Budget::Inputs(10),
            crash_dir: None,
            pool_limit: 16,
        };
        let err = run(&broken, &[b"abc".to_vec()], &options).unwrap_err();
        assert_eq!(err, "test: its fixture cannot be built: no model");
    }

    #[test]
    fn a_panic_is_reported_with_its_input_and_the_run_goes_on() {
        let options = Options {
            seed: 1,
            budget: Budget::Inputs(500),
            crash_dir: None,
            pool_limit: 16,
        };
        let report = run(&target(panics_on_bang), &[b"abc".to_vec()], &options).unwrap();
        assert_eq!(report.inputs, 501);
        assert!(report.failures > 0);
        let f = &report.findings[0];
        assert!(f.input.contains(&b'!'));
        assert!(
            matches!(&f.failure, Failure::Panic(m) if m.contains("a bang")),
            "{:?}",
            f.failure
        );
    }

    #[test]
    fn an_allocation_over_the_limit_is_a_finding() {
        let (result, largest) = run_one(&target(allocates), b"A");
        assert_eq!(result, Err(Failure::Allocation(largest)));
        assert!(largest > ALLOCATION_LIMIT);
        let (result, _) = run_one(&target(allocates), b"B");
        assert_eq!(result, Ok(String::new()));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert_eq!(unhex("0g"), None);
    }
}
