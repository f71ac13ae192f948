//! The line codec fuzz corpus on stable Rust: every file of `fuzz/corpus/line_codec`
//! goes through the fuzz target's check (`fuzz/checks/line_codec.rs`: the codec
//! against a model, with bounded buffering), then a bounded, seeded randomized pass.
//! See RELIABILITY.md.

#[path = "../../fuzz/checks/line_codec.rs"]
mod checks;
#[path = "../../fuzz/checks/random.rs"]
mod random;

use random::{corpus, mutate, Checking, Rng};

#[test]
fn line_codec_corpus() {
    for (path, bytes) in corpus("line_codec") {
        let _guard = Checking(&path.to_string_lossy(), &bytes);
        checks::line_codec(&bytes);
    }
}

#[test]
fn line_codec_randomized() {
    let files = corpus("line_codec");
    let mut rng = Rng::new(5);
    for case in 0..3000 {
        let input = if rng.chance(50) {
            let (_, a) = rng.pick(&files);
            let (_, b) = rng.pick(&files);
            mutate(&mut rng, a, b)
        } else {
            // Random lines, dense in LF and CR, around a random limit.
            (0..rng.below(600))
                .map(|_| *rng.pick(b"\n\n\r\rab cd\xc3\xa9\xff"))
                .collect()
        };
        let _guard = Checking(&format!("line_codec case {case}"), &input);
        checks::line_codec(&input);
    }
}
