//! The mutation engine: a seeded xorshift generator and the byte-level edits it stacks on
//! an input (bit flips, byte sets, inserts, deletes, duplicated and repeated chunks,
//! interesting integers as text and as little-endian bytes, a target's dictionary tokens,
//! and splices with other inputs). Deterministic: the same seed and pool give the same
//! stream of inputs, so any run can be replayed.

/// xorshift64* (Vigna): fast, 64 bits of state, good enough to pick mutations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift's state must not be zero).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Numbers at the edges of the types decoders parse into, as text.
const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "3",
    "4",
    "7",
    "8",
    "16",
    "100",
    "101",
    "127",
    "128",
    "255",
    "256",
    "-128",
    "-129",
    "32767",
    "32768",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1000000000",
    "1e309",
    "-1e309",
    "1e-400",
    "0.5",
    "1.5",
    "NaN",
    "Infinity",
    "1E2",
    "0x10",
    "00",
    "99999999999999999999999999",
];

/// The same edges as little-endian integers, for binary formats.
const INTERESTING_INT: &[u64] = &[
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// Stacks random edits on inputs, with a target's dictionary.
#[derive(Clone, Debug)]
pub struct Mutator {
    rng: Rng,
    dictionary: &'static [&'static str],
    max_len: usize,
}

impl Mutator {
    /// A mutator seeded with `seed`, inserting `dictionary` tokens, keeping inputs at most
    /// `max_len` bytes.
    pub fn new(seed: u64, dictionary: &'static [&'static str], max_len: usize) -> Self {
        Self {
            rng: Rng::new(seed),
            dictionary,
            max_len: max_len.max(1),
        }
    }

    /// The generator, for choices the caller makes (which pool entry to start from).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A mutated copy of `input`: 1 to 8 stacked edits (usually few); `other` is another
    /// input to splice with.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = input.to_vec();
        let edits = match self.rng.below(8) {
            0..=3 => 1,
            4 | 5 => 2,
            6 => 4,
            _ => 8,
        };
        for _ in 0..edits {
            self.edit(&mut data, other);
        }
        data.truncate(self.max_len);
        data
    }

    fn edit(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let len = data.len();
        match self.rng.below(14) {
            // Flip one bit.
            0 if len > 0 => {
                let i = self.rng.below(len);
                data[i] ^= 1 << self.rng.below(8);
            }
            // Set a byte: any value, or one that means something to a parser.
            1 if len > 0 => {
                let i = self.rng.below(len);
                const SYNTAX: &[u8] = b"{}[]\",:\\-0 \n\t#&*!|>'\x00\xff";
                data[i] = if self.rng.one_in(2) {
                    self.rng.next_u64() as u8
                } else {
                    SYNTAX[self.rng.below(SYNTAX.len())]
                };
            }
            // Insert a few random bytes.
            2 => {
                let at = self.rng.below(len + 1);
                let n = 1 + self.rng.below(4);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(16));
                data.drain(at..at + n);
            }
            // Copy a chunk elsewhere.
            4 if len > 0 => {
                let from = self.rng.below(len);
                let n = 1 + self.rng.below((len - from).min(64));
                let chunk = data[from..from + n].to_vec();
                let at = self.rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            // Repeat a short chunk many times (deep nesting, long arrays, many headers).
            5 if len > 0 => {
                let from = self.rng.below(len);
                let n = 1 + self.rng.below((len - from).min(8));
                let times = 2 + self.rng.below(256);
                let chunk = data[from..from + n].repeat(times);
                data.splice(from..from, chunk);
            }
            // An interesting number as text, replacing the digits at a position (or inserted).
            6 | 7 => {
                let token = INTERESTING_TEXT[self.rng.below(INTERESTING_TEXT.len())];
                let (start, end) = self.number_at(data);
                data.splice(start..end, token.bytes());
            }
            // An interesting integer as 1, 2, 4 or 8 little-endian bytes over the data.
            8 if len > 0 => {
                let value = INTERESTING_INT[self.rng.below(INTERESTING_INT.len())];
                let width = [1, 2, 4, 8][self.rng.below(4)].min(len);
                let at = self.rng.below(len - width + 1);
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            // A dictionary token, inserted or over existing bytes.
            9 | 10 if !self.dictionary.is_empty() => {
                let token = self.dictionary[self.rng.below(self.dictionary.len())].as_bytes();
                let at = self.rng.below(len + 1);
                let end = if self.rng.one_in(2) {
                    (at + token.len()).min(len)
                } else {
                    at
                };
                data.splice(at..end, token.iter().copied());
            }
            // Splice: this input's head with the other's tail.
            11 if !other.is_empty() => {
                let keep = self.rng.below(len + 1);
                let from = self.rng.below(other.len());
                data.truncate(keep);
                data.extend_from_slice(&other[from..]);
            }
            // Truncate (a body cut short).
            12 if len > 1 => {
                let keep = self.rng.below(len);
                data.truncate(keep);
            }
            // Swap two bytes.
            _ if len > 1 => {
                let (a, b) = (self.rng.below(len), self.rng.below(len));
                data.swap(a, b);
            }
            _ => data.push(self.rng.next_u64() as u8),
        }
    }

    /// A range to put a number in: the run of digits at a random position if it falls on
    /// one, else an empty range there.
    fn number_at(&mut self, data: &[u8]) -> (usize, usize) {
        let at = self.rng.below(data.len() + 1);
        let numeric = |b: &u8| b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E');
        if !data.get(at).is_some_and(numeric) {
            return (at, at);
        }
        let start = data[..at]
            .iter()
            .rposition(|b| !numeric(b))
            .map_or(0, |i| i + 1);
        let end = data[at..]
            .iter()
            .position(|b| !numeric(b))
            .map_or(data.len(), |i| at + i);
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let run = |seed| {
            let mut m = Mutator::new(seed, &["\"inputs\""], 1024);
            (0..200)
                .map(|_| m.mutate(b"{\"a\": [1, 2]}", b"[3]"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn inputs_stay_within_the_length_limit() {
        let mut m = Mutator::new(1, &["0123456789"], 64);
        let mut input = b"12345".to_vec();
        for _ in 0..2_000 {
            input = m.mutate(&input, b"abcdef");
            assert!(input.len() <= 64);
        }
    }

    #[test]
    fn numbers_are_replaced_whole() {
        let mut m = Mutator::new(3, &[], 64);
        for _ in 0..100 {
            let (s, e) = m.number_at(b"[12, -3.5]");
            assert!(matches!((s, e), (1, 3) | (5, 9)) || s == e, "{s}..{e}");
        }
    }
}
