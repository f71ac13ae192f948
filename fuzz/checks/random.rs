//! A small seeded PRNG and a corpus mutator for the stable-Rust randomized passes
//! (`protocol/tests/fuzz_corpus.rs`, `actors/tests/fuzz_corpus.rs`): a few thousand
//! libFuzzer-style mutations of the seed corpus on every `cargo test`, reproducible
//! from the seed, without a dependency. Not a replacement for `cargo fuzz` (no
//! coverage feedback), a guard against regressions in CI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// SplitMix64: tiny, fast, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Byte strings that matter to the parsers: JSON and SECoP syntax, multi-byte
/// characters (the slicing bugs), extreme numbers.
pub const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "é",
    "‹",
    "😀",
    "\u{0}",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "  ",
    "\n",
    "\r",
    "\r\n",
    "0",
    "-1",
    "1.5",
    "1e308",
    "-1e308",
    "18446744073709551615",
    "-9223372036854775808",
    "9223372036854775807",
    "1099511627776",
    "null",
    "true",
    "false",
    "\"type\"",
    "\"min\"",
    "\"max\"",
    "\"members\"",
    "\"maxlen\"",
    "\"minlen\"",
    "\"fmtstr\"",
    "\"%.é\"",
    "\"elementtype\"",
    "\"<é\"",
    "\"‹é\"",
    "\"modules\"",
    "\"accessibles\"",
    "\"datainfo\"",
    "change ",
    "read ",
    "m:p",
    "*IDN?",
    "\u{7f}",
];

/// The files of `fuzz/corpus/<target>`, sorted by name.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    // Included by the member crates (fuzz/ is a sibling) and by the root crate.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if root.join("fuzz/corpus").is_dir() {
        root.join("fuzz/corpus")
    } else {
        root.join("../fuzz/corpus")
    }
    .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 12,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
}

/// Names the input being checked if the check panics.
pub struct Checking<'a>(pub &'a str, pub &'a [u8]);

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "while checking {}: {:?}",
                self.0,
                String::from_utf8_lossy(self.1)
            );
        }
    }
}

/// One to four random edits of `seed` (bit flips, token insertions, deletions,
/// duplications, splices with `other`).
pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = rng.pick(TOKENS).as_bytes().to_vec();
                data.splice(at..at, token);
            }
            2 if !data.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(16)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            4 if !other.is_empty() => {
                let start = rng.below(other.len());
                let piece = other[start..].to_vec();
                data.truncate(at);
                data.extend_from_slice(&piece);
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

/// Run `check` over every corpus file of `target` (the stable replay of the seeds and
/// regression inputs).
pub fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let _guard = Checking(&path.to_string_lossy(), &bytes);
        check(&bytes);
    }
}

/// Run `check` over `cases` mutations of the corpus of `target`, reproducible from
/// `seed`.
pub fn randomized(target: &str, seed: u64, cases: usize, check: fn(&[u8])) {
    let files = corpus(target);
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        let (_, a) = rng.pick(&files);
        let (_, b) = rng.pick(&files);
        let input = mutate(&mut rng, a, b);
        let _guard = Checking(&format!("{target} case {case} (seed {seed})"), &input);
        check(&input);
    }
}
