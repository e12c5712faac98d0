//! The packed graph (models/pack.py) against the plain export it is made
//! from: the same vectors for texts of every length, in mixed batches.

use cordon::embed::{EmbedSettings, Layout, Model, PLAIN_MODEL_FILE};

use crate::helpers::embed_settings;

/// Texts from one word to past the 256-token limit, in an order that mixes
/// lengths inside every batch of 16.
pub(crate) fn varied_texts() -> Vec<String> {
    let words = [
        "my", "sister", "prefers", "oat", "milk", "in", "her", "coffee", "and", "books", "Thai",
        "food", "on", "Fridays", "after", "the", "long", "meeting", "with", "Maya",
    ];
    (0..240)
        .map(|i| {
            let n = match i % 6 {
                0 => 1,
                1 | 2 => 8 + i % 13,
                3 => 30 + i % 17,
                4 => 90 + i % 29,
                _ => 300 + i % 50,
            };
            (0..n)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn load(file: &str) -> Model {
    let settings = EmbedSettings {
        model_file: file.to_owned(),
        ..embed_settings()
    };
    Model::load(&settings).expect("model assets present: run `python3 models/fetch.py`")
}

/// Cosine of two unit vectors.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

#[test]
fn the_packed_graph_embeds_as_the_plain_export_does() {
    let mut packed = load(cordon::embed::MODEL_FILE);
    let mut plain = load(PLAIN_MODEL_FILE);
    assert_eq!(packed.layout(), Layout::Packed);
    assert_eq!(plain.layout(), Layout::Padded);

    let texts = varied_texts();
    let mut worst = f64::MAX;
    for batch in texts.chunks(16) {
        let together = packed.embed(batch).expect("packed batch").vectors;
        for (text, vector) in batch.iter().zip(&together) {
            // One at a time through the plain export: no padding at all.
            let alone = plain
                .embed(std::slice::from_ref(text))
                .expect("plain text")
                .vectors;
            worst = worst.min(cosine(vector, &alone[0]));
        }
    }
    assert!(
        worst >= 0.9999,
        "lowest cosine between the packed and the plain vectors: {worst}"
    );
}
