//! The world's language: plurals, number words, the parser of objects in free text (CHAIR's
//! reading with the world's own synonyms), captions, instruction data, probes and questions.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::scene::{companion, Object, Scene, Shape};
use crate::eval::bench::SHORT_SUFFIX;
use crate::rng::Rng;

/// The prompt of the description questions (captions.json uses brief prompts, see [`BRIEF`]).
pub const DESCRIBE: &str = "Describe this image in detail.";
/// The prompts of the descriptions in instruct.json, one drawn per image: the held-out question's
/// and paraphrases, as LLaVA's detailed-description data draws from a list of prompts, among them
/// STIC's description prompts and its step-by-step prompt (`stic::prompts`), so that STIC's
/// prompts ask this tiny model for a description as they ask LLaVA-1.5 (which generalises from its
/// many paraphrases; a model this small does not: without them it answers the step-by-step
/// prompt's "Is it indoors or outdoors?" with "Yes.").
pub fn describe_prompts() -> Vec<&'static str> {
    let mut v = vec![
        DESCRIBE,
        "Describe the image.",
        "What do you see in this picture?",
        "Give a detailed description of the picture.",
        "Explain what the image shows.",
        "Tell me about the objects in the image.",
    ];
    v.extend(crate::stic::prompts::DESCRIPTION_PROMPTS);
    v.push(crate::stic::prompts::GOOD_PROMPT);
    v
}

/// The prompts of captions.json (LLaVA's stage-1 data asks for a brief description).
pub const BRIEF: [&str; 3] = ["Describe the image briefly.", "What is in this picture?", "Give a short caption of the image."];

pub const NUMBERS: [&str; 11] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

/// The English plural of a word of the vocabulary (the last word of a phrase is inflected).
pub fn plural(w: &str) -> String {
    if w.ends_with('s') || w.ends_with('x') || w.ends_with("sh") || w.ends_with("ch") {
        format!("{w}es")
    } else {
        format!("{w}s")
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Every surface form of every object (synonyms and their plurals) -> the object.
fn forms() -> &'static HashMap<String, Shape> {
    static F: OnceLock<HashMap<String, Shape>> = OnceLock::new();
    F.get_or_init(|| {
        let mut m = HashMap::new();
        for s in Shape::ALL {
            for w in s.synonyms() {
                m.insert(w.to_string(), s);
                m.insert(plural(w), s);
            }
        }
        m
    })
}

/// The objects a text mentions, in order, one per mention: CHAIR's reading (nltk's tokenizer as
/// `eval::chair` ports it, lowercase, two-word forms before one-word ones, a word counted once) with
/// the world's synonyms and plurals in place of COCO's.
pub fn mentions(text: &str) -> Vec<(String, Shape)> {
    let toks = crate::eval::chair::word_tokenize(&text.to_lowercase());
    let f = forms();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if i + 1 < toks.len() {
            let pair = format!("{} {}", toks[i], toks[i + 1]);
            if let Some(&s) = f.get(&pair) {
                out.push((pair, s));
                i += 2;
                continue;
            }
        }
        if let Some(&s) = f.get(&toks[i]) {
            out.push((toks[i].clone(), s));
        }
        i += 1;
    }
    out
}

/// The count an answer gives: its first number (digits or a word from zero to ten); "no" and
/// "none" read as 0.
pub fn parse_count(text: &str) -> Option<usize> {
    for t in crate::eval::chair::word_tokenize(&text.to_lowercase()) {
        if let Ok(n) = t.parse::<usize>() {
            return Some(n);
        }
        if let Some(n) = NUMBERS.iter().position(|w| *w == t) {
            return Some(n);
        }
        if t == "no" || t == "none" {
            return Some(0);
        }
    }
    None
}

fn number(n: usize) -> String {
    NUMBERS.get(n).map_or_else(|| n.to_string(), |w| w.to_string())
}

fn position_phrase(p: &str) -> String {
    match p {
        "center" => "in the center".into(),
        "left" | "right" => format!("on the {p}"),
        _ => format!("at the {p}"),
    }
}

/// "a large red circle" for each object.
fn object_phrase(o: &Object) -> String {
    format!("a {} {} {}", o.size, o.colour, o.shape.name())
}

fn join_and(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// A brief caption: every object once, with a template chosen by `rng`.
pub fn caption(s: &Scene, rng: &mut Rng) -> String {
    let objs: Vec<String> = s.objects.iter().map(object_phrase).collect();
    let list = join_and(&objs);
    match rng.below(3) {
        0 => capitalise(&format!("{list} on a {} background.", s.background)),
        1 => format!("A {} background with {list}.", s.background),
        _ => format!("The picture shows {list}."),
    }
}

/// The detailed description: how many objects, the background, then one sentence per object with
/// its position.
pub fn description(s: &Scene) -> String {
    let n = s.objects.len();
    let head = if n == 1 {
        format!("There is one object on a {} background.", s.background)
    } else {
        format!("There are {} objects on a {} background.", number(n), s.background)
    };
    let body: Vec<String> = s.objects.iter().map(|o| capitalise(&format!("{} is {}.", object_phrase(o), position_phrase(&o.position)))).collect();
    format!("{head} {}", body.join(" "))
}

fn conversation(id: &str, image: &str, turns: &[(String, String)]) -> Value {
    let mut conv = Vec::new();
    for (k, (q, a)) in turns.iter().enumerate() {
        let q = if k == 0 { format!("<image>\n{q}") } else { q.clone() };
        conv.push(json!({"from": "human", "value": q}));
        conv.push(json!({"from": "gpt", "value": a}));
    }
    json!({"id": id, "image": image, "conversations": conv})
}

/// captions.json's example for a scene (LLaVA's stage-1 format: one brief prompt, the caption).
pub fn caption_example(s: &Scene, rng: &mut Rng) -> Value {
    let prompt = BRIEF[rng.below(BRIEF.len())].to_string();
    conversation(&s.id, &s.image, &[(prompt, caption(s, rng))])
}

fn short(q: &str) -> String {
    format!("{q}\n{SHORT_SUFFIX}")
}

/// The probe question for an object.
pub fn probe_question(s: Shape) -> String {
    format!("Is there a {} in the image?", s.name())
}

/// A yes/no probe in POPE's style.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub question_id: String,
    pub image: String,
    /// The question (POPE's `text`); the prompt adds LLaVA's short-answer suffix.
    pub text: String,
    pub prompt: String,
    pub object: Shape,
    /// "yes" or "no".
    pub label: String,
    /// "present" (label yes), "adversarial" (the absent usual companion of a present object) or
    /// "random" (another absent object).
    pub category: String,
}

/// A held-out question with a reference answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub question_id: String,
    pub image: String,
    /// "describe" or "count".
    pub kind: String,
    pub prompt: String,
    /// The reference: the description (for describe), the number (for count).
    pub answer: String,
}

/// The probes of a scene: one "yes" per shape present; as many "no"s, first the absent companions
/// of the present shapes (adversarial), then absent shapes drawn at random.
pub fn probes(s: &Scene, rng: &mut Rng) -> Vec<Probe> {
    let present = s.shapes();
    let mut absent_companions: Vec<Shape> = present.iter().filter_map(|&p| companion(p).map(|c| c.0)).filter(|c| !present.contains(c)).collect();
    absent_companions.dedup();
    let mut others: Vec<Shape> = Shape::ALL.into_iter().filter(|c| !present.contains(c) && !absent_companions.contains(c)).collect();
    let mut out = Vec::new();
    let mut push = |obj: Shape, label: &str, category: &str| {
        let text = probe_question(obj);
        out.push(Probe {
            question_id: format!("probe/{}/{}", s.id, obj.name()),
            image: s.image.clone(),
            prompt: short(&text),
            text,
            object: obj,
            label: label.into(),
            category: category.into(),
        });
    };
    for &p in &present {
        push(p, "yes", "present");
    }
    for &c in absent_companions.iter().take(present.len()) {
        push(c, "no", "adversarial");
    }
    for _ in absent_companions.len().min(present.len())..present.len() {
        if others.is_empty() {
            break;
        }
        let c = others.remove(rng.below(others.len()));
        push(c, "no", "random");
    }
    out
}

/// The held-out questions of a scene: the description, the total count, and the count of one shape.
pub fn questions(s: &Scene, rng: &mut Rng) -> Vec<Question> {
    let shapes = s.shapes();
    let one = shapes[rng.below(shapes.len())];
    let q = |kind: &str, suffix: &str, prompt: String, answer: String| Question {
        question_id: format!("{kind}/{}{suffix}", s.id),
        image: s.image.clone(),
        kind: kind.into(),
        prompt,
        answer,
    };
    vec![
        q("describe", "", DESCRIBE.into(), description(s)),
        q("count", "/all", short("How many objects are there in the image?"), s.objects.len().to_string()),
        q("count", &format!("/{}", one.name()), short(&format!("How many {} are there?", plural(one.name()))), s.count(one).to_string()),
    ]
}

/// instruct.json's example for a scene: a multi-turn conversation (LLaVA's stage-2 format) with a
/// description, counting, colour and position questions and two yes/no probes (one present, one
/// absent: the usual companion when it is absent), all in a random order.
pub fn instruct_example(s: &Scene, rng: &mut Rng) -> Value {
    let shapes = s.shapes();
    let prompts = describe_prompts();
    let mut turns: Vec<(String, String)> = vec![(prompts[rng.below(prompts.len())].into(), description(s))];
    turns.push((short("How many objects are there in the image?"), format!("{}.", capitalise(&number(s.objects.len())))));
    let one = shapes[rng.below(shapes.len())];
    turns.push((short(&format!("How many {} are there?", plural(one.name()))), format!("{}.", capitalise(&number(s.count(one))))));
    // Colour and position of a shape that appears once.
    let single: Vec<&Object> = s.objects.iter().filter(|o| s.count(o.shape) == 1).collect();
    if !single.is_empty() {
        let o = single[rng.below(single.len())];
        turns.push((short(&format!("What color is the {}?", o.shape.name())), format!("{}.", capitalise(&o.colour))));
        turns.push((short(&format!("Where is the {} {}?", o.colour, o.shape.name())), format!("{}.", capitalise(&o.position))));
    }
    let ps = probes(s, rng);
    let yes: Vec<&Probe> = ps.iter().filter(|p| p.label == "yes").collect();
    let no: Vec<&Probe> = ps.iter().filter(|p| p.label == "no").collect();
    if let Some(p) = yes.get(rng.below(yes.len().max(1))) {
        turns.push((p.prompt.clone(), "Yes.".into()));
    }
    if let Some(p) = no.first() {
        turns.push((p.prompt.clone(), "No.".into()));
    }
    // Every turn in a random order (Fisher-Yates): the image comes with the first turn, whichever
    // it is, so that a question asked first (as at evaluation) is in the training distribution.
    for k in (1..turns.len()).rev() {
        let j = rng.below(k + 1);
        turns.swap(k, j);
    }
    conversation(&s.id, &s.image, &turns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{make_scene, MakeArgs};

    #[test]
    fn mentions_read_synonyms_plurals_and_two_word_forms() {
        let m: Vec<Shape> = mentions("Two red discs, a Box and a plus sign; no crosses. Rhombuses! The hoops.").into_iter().map(|(_, s)| s).collect();
        assert_eq!(m, [Shape::Circle, Shape::Square, Shape::Cross, Shape::Cross, Shape::Diamond, Shape::Ring]);
        assert!(mentions("a red blob on a grey background").is_empty());
    }

    #[test]
    fn counts_are_read_from_words_and_digits() {
        assert_eq!(parse_count("Three."), Some(3));
        assert_eq!(parse_count("there are 4 objects"), Some(4));
        assert_eq!(parse_count("None."), Some(0));
        assert_eq!(parse_count("many"), None);
    }

    #[test]
    fn texts_name_exactly_the_ground_truth() {
        let a = MakeArgs { n: 40, seed: 5, size: 64, heldout: 0.5 };
        for i in 0..a.n {
            let (s, _) = make_scene(&a, i, "heldout");
            let mut want: Vec<Shape> = s.objects.iter().map(|o| o.shape).collect();
            want.sort();
            for text in [description(&s), caption(&s, &mut Rng::new(i as u64))] {
                let mut got: Vec<Shape> = mentions(&text).into_iter().map(|(_, s)| s).collect();
                got.sort();
                assert_eq!(got, want, "{text}");
            }
            let ps = probes(&s, &mut Rng::new(1));
            let yes = ps.iter().filter(|p| p.label == "yes").count();
            assert_eq!(yes, s.shapes().len());
            assert!(ps.len() <= 2 * yes);
            for p in &ps {
                assert_eq!(p.label == "yes", s.shapes().contains(&p.object), "{p:?}");
                if p.category == "adversarial" {
                    assert!(s.shapes().iter().any(|&q| companion(q).map(|c| c.0) == Some(p.object)));
                }
            }
        }
    }
}
