//! Trace files: CSV, one arrival a line, `timestamp_seconds[,duration_ms]`.
//!
//! Blank lines and lines starting with `#` are skipped. Timestamps must be finite, not
//! negative, and never go back in time; durations are whole or fractional milliseconds.

use std::fmt;

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    /// Arrival time, in milliseconds from the start of the trace.
    pub at_ms: u64,
    /// Service time in milliseconds, when the trace gives one.
    pub duration_ms: Option<u64>,
}

/// A malformed trace line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The most arrivals one trace may hold (bounds the simulator's memory).
pub const MAX_ARRIVALS: usize = 10_000_000;
/// The longest a trace may span: 31 days.
const MAX_SECONDS: f64 = 31.0 * 24.0 * 3600.0;

/// Parses a trace, reporting every malformed line (at most 20) with its line number.
pub fn parse_trace(text: &str) -> Result<Vec<Arrival>, Vec<TraceError>> {
    let mut arrivals = Vec::new();
    let mut errors = Vec::new();
    let mut previous: Option<(f64, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut fail = |message: String| {
            if errors.len() < 20 {
                errors.push(TraceError { line, message });
            }
        };
        let mut fields = content.split(',').map(str::trim);
        let ts_text = fields.next().unwrap_or_default();
        let duration_text = fields.next();
        if fields.next().is_some() {
            fail(format!(
                "expected `timestamp_seconds[,duration_ms]`, found {} fields",
                content.split(',').count()
            ));
            continue;
        }
        let ts = match ts_text.parse::<f64>() {
            Ok(t) if t.is_finite() && (0.0..=MAX_SECONDS).contains(&t) => t,
            Ok(_) => {
                fail(format!(
                    "timestamp {ts_text:?} is outside 0 ..= {MAX_SECONDS} seconds"
                ));
                continue;
            }
            Err(_) => {
                fail(format!("timestamp {ts_text:?} is not a number of seconds"));
                continue;
            }
        };
        if let Some((prev, prev_line)) = previous
            && ts < prev
        {
            fail(format!(
                "timestamp {ts} is before {prev} on line {prev_line}: arrivals must be in order"
            ));
            continue;
        }
        let duration_ms = match duration_text {
            None | Some("") => None,
            Some(d) => match d.parse::<f64>() {
                Ok(ms) if ms.is_finite() && (0.0..=3_600_000.0).contains(&ms) => {
                    Some(ms.round() as u64)
                }
                _ => {
                    fail(format!(
                        "duration {d:?} is not a number of milliseconds in 0 ..= 3600000"
                    ));
                    continue;
                }
            },
        };
        if arrivals.len() >= MAX_ARRIVALS {
            fail(format!("more than {MAX_ARRIVALS} arrivals"));
            break;
        }
        previous = Some((ts, line));
        arrivals.push(Arrival {
            at_ms: (ts * 1000.0).round() as u64,
            duration_ms,
        });
    }
    if errors.is_empty() {
        Ok(arrivals)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrivals_with_and_without_durations() {
        let t = parse_trace("# a trace\n0\n1.5,200\n\n1.5, 30.4\n").unwrap();
        assert_eq!(
            t,
            vec![
                Arrival {
                    at_ms: 0,
                    duration_ms: None
                },
                Arrival {
                    at_ms: 1500,
                    duration_ms: Some(200)
                },
                Arrival {
                    at_ms: 1500,
                    duration_ms: Some(30)
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let errors = parse_trace("1\nsoon\n2,fast\n-1\n3,1,2\n0.5\nNaN\n").unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
        assert_eq!(
            errors[0].to_string(),
            "line 2: timestamp \"soon\" is not a number of seconds"
        );
        assert_eq!(
            errors[4].to_string(),
            "line 6: timestamp 0.5 is before 1 on line 1: arrivals must be in order"
        );
    }
}
