//! Canary texts: every memory the load tool stores names its owner.
//!
//! A memory's text is a generated sentence followed by a tag
//! `[canary <run>-<user>-<n>]`. Reading the tag back tells, for any text in
//! any response, whose memory it is, so a foreign memory cannot pass unseen.

use rand::Rng;
use rand::seq::IndexedRandom;

const SUBJECTS: &[&str] = &[
    "my sister",
    "the new manager",
    "our landlord",
    "the dentist",
    "my running partner",
    "the piano teacher",
    "grandfather",
    "the neighbour's kid",
    "my accountant",
    "the project lead",
];
const VERBS: &[&str] = &[
    "prefers",
    "is allergic to",
    "keeps forgetting",
    "asked me about",
    "recommended",
    "complained about",
    "booked",
    "wants to learn",
    "lost",
    "paid for",
];
const OBJECTS: &[&str] = &[
    "oat milk in coffee",
    "the quarterly tax return",
    "a trip to Lisbon in May",
    "spicy Thai food",
    "the blue winter jacket",
    "Spanish lessons on Tuesdays",
    "the gym membership",
    "a vegetarian birthday cake",
    "the car insurance renewal",
    "early morning meetings",
];
const WHEN: &[&str] = &[
    "last week",
    "every Friday",
    "since January",
    "before the holidays",
    "at the weekend",
    "this morning",
];

/// A sentence in the style of an assistant's memory, without a tag.
pub fn sentence(rng: &mut impl Rng) -> String {
    let pick = |rng: &mut _, list: &[&'static str]| -> &'static str {
        list.choose(rng).expect("word lists are not empty")
    };
    format!(
        "{} {} {} {}",
        pick(rng, SUBJECTS),
        pick(rng, VERBS),
        pick(rng, OBJECTS),
        pick(rng, WHEN)
    )
}

/// The owner and sequence number a tag names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The run that wrote it.
    pub run: String,
    /// The user index within that run.
    pub user: usize,
    /// The user's memory number.
    pub n: usize,
}

/// A memory text for `user`'s `n`-th memory in `run`.
pub fn text(rng: &mut impl Rng, run: &str, user: usize, n: usize) -> String {
    format!("{} [canary {run}-{user}-{n}]", sentence(rng))
}

/// Reads the tag of a memory text; `None` if it carries none.
pub fn parse(text: &str) -> Option<Tag> {
    let start = text.rfind("[canary ")? + "[canary ".len();
    let body = text[start..].strip_suffix(']')?;
    let mut parts = body.rsplitn(3, '-');
    let n = parts.next()?.parse().ok()?;
    let user = parts.next()?.parse().ok()?;
    let run = parts.next()?.to_owned();
    Some(Tag { run, user, n })
}

/// Whose text this is, relative to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The caller's own memory number `n`.
    Own(usize),
    /// Anything else: another user's canary, another run's, or no tag.
    Foreign,
}

/// Classifies a text returned to `user` in `run`.
pub fn origin(text: &str, run: &str, user: usize) -> Origin {
    match parse(text) {
        Some(tag) if tag.run == run && tag.user == user => Origin::Own(tag.n),
        _ => Origin::Foreign,
    }
}

/// Proves, before a run, that the classifier flags what it must: a run
/// whose detector could not fire would report `leaks: 0` for nothing.
pub fn self_check(run: &str) -> Result<(), String> {
    let mut rng = rand::rng();
    let mine = text(&mut rng, run, 7, 3);
    let cases = [
        (mine.as_str(), Origin::Own(3)),
        (&*text(&mut rng, run, 8, 3), Origin::Foreign),
        (&*text(&mut rng, run, 70, 3), Origin::Foreign),
        (&*text(&mut rng, "other", 7, 3), Origin::Foreign),
        ("a memory with no tag at all", Origin::Foreign),
        ("[canary broken", Origin::Foreign),
    ];
    for (text, want) in cases {
        let got = origin(text, run, 7);
        if got != want {
            return Err(format!(
                "canary self-check: {text:?} classified {got:?}, expected {want:?}"
            ));
        }
    }
    Ok(())
}
