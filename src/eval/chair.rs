//! CHAIR (Rohrbach et al. 2018): object hallucination in image descriptions. CHAIR_S is the fraction
//! of captions that mention at least one MSCOCO object absent from the image; CHAIR_I the fraction
//! of object mentions that are absent.
//!
//! Source: CSR's README points to LURE, whose README computes CHAIR with LisaAnne/Hallucination
//! `utils/chair.py` @ 6e4d33c (after LURE's `tool/to_chair.py`, which drops empty answers). This is a
//! port of its semantics; the fixtures (tests/fixtures/eval/chair) come from running that file
//! (scripts/gen_chair_fixtures.py). Word lists are data: `data/chair_synonyms.txt` (the official
//! synonyms list, verbatim, BSD 2-Clause) and `data/pattern_en_singular.txt` (pattern 3.6's
//! `singularize` tables, BSD 3-Clause).
//!
//! A caption's objects (`caption_to_words`): lowercase; nltk 3.2.5 `word_tokenize` (Punkt sentence
//! split, then the Treebank word tokenizer on each sentence); pattern's `singularize` on every token;
//! adjacent pairs in the "double words" table replaced (left to right, a replaced pair consumes both
//! tokens); "seat" dropped when "toilet" is present; tokens not in the synonyms list dropped; each
//! kept token mapped to its synonym line's first word (the "node word").
//!
//! Ground truth per image: the node words of its COCO instance categories, plus the node words of
//! its COCO ground-truth captions. A mention is hallucinated when its node word is not in the image's
//! ground truth.
//!
//! Files: `--data` is a folder (or one file in it) holding COCO `instances_*.json` and
//! `captions_*.json` (e.g. `instances_val2014.json`, `captions_val2014.json`; all found are merged,
//! as chair.py merges train and val 2014). Items are the images of the instances files, by id, with
//! the prompt [`PROMPT`]; images are looked up in `val2014/` beside the files or one folder up.
//! A predictions line's key is the image id.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use super::bench::{id_text, image_root, ratio, read_json, Bench, Benchmark, ImageRef, Item, Predictions};
use crate::error::{Error, Result};

/// The description prompt (LLaVA's detailed-description instruction; the official CHAIR code scores
/// captions and prescribes none).
pub const PROMPT: &str = "Please describe this image in detail.";

const SYNONYMS: &str = include_str!("data/chair_synonyms.txt");
const SINGULAR: &str = include_str!("data/pattern_en_singular.txt");

/// chair.py's `coco_double_words` (each maps to itself).
const DOUBLE_WORDS: [&str; 29] = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light", "fire hydrant", "stop sign",
    "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer", "stove top oven", "hot dog", "teddy bear",
    "home plate", "train track",
];
/// "baby X" / "adult X" → X.
const ANIMAL_WORDS: [&str; 12] = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"];
/// "passenger X" → X.
const VEHICLE_WORDS: [&str; 2] = ["jet", "train"];

// ---------------------------------------------------------------------------------------------
// pattern.en singularize.

struct Singular {
    prepositions: HashSet<String>,
    uninflected: Vec<String>,
    uncountable: Vec<String>,
    ie: Vec<String>,
    irregular: Vec<(String, Regex, String)>,
    rules: Vec<(Regex, String)>,
}

/// Python's `\N` replacement groups as the regex crate's `${N}`.
fn py_replacement(r: &str) -> String {
    let mut out = String::new();
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push_str(&format!("${{{}}}", chars.next().unwrap_or('0')));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}

fn singular_tables() -> &'static Singular {
    static S: OnceLock<Singular> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = Singular { prepositions: HashSet::new(), uninflected: vec![], uncountable: vec![], ie: vec![], irregular: vec![], rules: vec![] };
        let mut section = "";
        for line in SINGULAR.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = match line {
                    "[prepositions]" => "p",
                    "[uninflected]" => "u",
                    "[uncountable]" => "c",
                    "[ie]" => "ie",
                    "[irregular]" => "irr",
                    "[rules]" => "r",
                    other => panic!("pattern_en_singular.txt: unknown section {other}"),
                };
                continue;
            }
            match section {
                "p" => drop(s.prepositions.insert(line.to_string())),
                "u" => s.uninflected.push(line.to_string()),
                "c" => s.uncountable.push(line.to_string()),
                "ie" => s.ie.push(line.to_string()),
                "irr" => {
                    let (pl, sg) = line.split_once(' ').expect("irregular: PLURAL SINGULAR");
                    let re = Regex::new(&format!("(?i){pl}$")).expect("irregular regex");
                    s.irregular.push((pl.to_string(), re, sg.to_string()));
                }
                "r" => {
                    let (re, rep) = line.split_once('\t').expect("rule: REGEX\\tREPLACEMENT");
                    s.rules.push((Regex::new(re).expect("singular rule regex"), py_replacement(rep)));
                }
                _ => panic!("pattern_en_singular.txt: data before a section"),
            }
        }
        s
    })
}

/// pattern 3.6 `pattern.en.singularize(word)` (nouns, no custom table).
pub fn singularize(word: &str) -> String {
    let s = singular_tables();
    if word.contains('-') {
        let parts: Vec<&str> = word.split('-').collect();
        if parts.len() > 1 && s.prepositions.contains(parts[1]) {
            return format!("{}-{}", singularize(parts[0]), parts[1..].join("-"));
        }
    }
    if let Some(w) = word.strip_suffix('\'') {
        return format!("{}'s", singularize(w));
    }
    let w = word.to_lowercase();
    // (sic) pattern tests whether a listed word ends with the input.
    if s.uninflected.iter().chain(&s.uncountable).any(|x| x.ends_with(&w)) {
        return word.to_string();
    }
    if s.ie.iter().any(|x| w.ends_with(&format!("{x}s"))) {
        return w;
    }
    for (pl, re, sg) in &s.irregular {
        if w.ends_with(pl.as_str()) {
            return re.replace_all(word, regex::NoExpand(sg)).into_owned();
        }
    }
    for (re, rep) in &s.rules {
        if re.is_match(word) {
            return re.replace_all(word, rep.as_str()).into_owned();
        }
    }
    word.to_string()
}

// ---------------------------------------------------------------------------------------------
// nltk 3.2.5 word_tokenize.

/// Punkt's "non-word" characters (PunktLanguageVars._re_non_word_chars).
fn punkt_non_word(c: char) -> bool {
    "?!)\";}]*:@'({[".contains(c)
}

/// Punkt's first-pass sentence break for the word token `tok` followed by `next` (None at the end):
/// the untrained model (no abbreviations, no orthographic context).
fn punkt_breaks(tok: &str, next: Option<&str>) -> bool {
    static NUM: OnceLock<Regex> = OnceLock::new();
    let num = NUM.get_or_init(|| Regex::new(r"^-?[\.,]?[0-9][0-9,\.-]*\.?$").expect("regex"));
    let Some(next) = next else { return false };
    if tok == "." || tok == "?" || tok == "!" {
        return true;
    }
    if !tok.ends_with('.') || tok.ends_with("..") {
        return false;
    }
    let body = &tok[..tok.len() - 1];
    let initial = body.chars().count() == 1 && body.chars().all(|c| c.is_alphabetic());
    if initial || num.is_match(tok) {
        // Punkt's orthographic heuristic with no context: a lowercase next word, or punctuation,
        // is not a sentence start.
        let first = next.chars().next().unwrap_or(' ');
        if ";:,.!?".contains(next) || first.is_lowercase() {
            return false;
        }
    }
    true
}

/// Punkt sentence spans (untrained): a candidate end is the last '.', '?' or '!' of a
/// whitespace-delimited chunk that is followed by punctuation in the chunk or by another chunk.
fn sentences(text: &str) -> Vec<&str> {
    let chunks: Vec<(usize, &str)> = text
        .split(|c: char| c.is_whitespace())
        .scan(0usize, |pos, c| {
            let start = *pos;
            *pos += c.len() + text[*pos + c.len()..].chars().next().map_or(0, char::len_utf8);
            Some((start, c))
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut last = 0usize;
    for (k, &(start, chunk)) in chunks.iter().enumerate() {
        let next_chunk = chunks.get(k + 1).map(|&(_, c)| c);
        let mut cand = chunk.char_indices().filter(|&(i, c)| {
            ".?!".contains(c) && {
                let after = chunk[i + c.len_utf8()..].chars().next();
                match after {
                    Some(a) => punkt_non_word(a),
                    None => next_chunk.is_some(),
                }
            }
        });
        let Some((p, _)) = cand.next_back() else { continue };
        let head = &chunk[..=p];
        let after = &chunk[p + 1..];
        // Punkt's word token ending at p: '?' and '!' are tokens of their own; otherwise the token
        // starts at the chunk's last non-word character before p (which begins it when it may start
        // a word, as ' may) or at the chunk's start.
        let tok = if head.ends_with(['?', '!']) {
            &head[p..]
        } else {
            match head[..p].char_indices().rfind(|&(_, c)| punkt_non_word(c)) {
                Some((j, c)) if "'?!".contains(c) => &head[j..],
                Some((j, c)) => &head[j + c.len_utf8()..],
                None => head,
            }
        };
        let next: Option<&str> = if !after.is_empty() { Some(&after[..after.chars().next().map_or(0, char::len_utf8)]) } else { next_chunk };
        if punkt_breaks(tok, next) {
            let end = start + p + 1;
            out.push(&text[last..end]);
            last = if after.is_empty() { chunks[k + 1].0 } else { end };
        }
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
    // Punkt then moves closing brackets and quotes that open a sentence back to the previous one
    // (`_realign_boundaries`); the Treebank rules below split them off as tokens either way, and
    // the final-period rule lets them follow the period, so the tokens are the same without it.
    out
}

struct Rule(Regex, &'static str);

fn treebank_rules() -> &'static [Vec<Rule>; 3] {
    static R: OnceLock<[Vec<Rule>; 3]> = OnceLock::new();
    R.get_or_init(|| {
        // Python 2 `re` without re.UNICODE: \d, \s, \b are ASCII.
        let r = |p: &str, s: &'static str| Rule(Regex::new(&p.replace("\\b", "(?-u:\\b)")).expect("treebank regex"), s);
        let before = vec![
            r(r#"^""#, "``"),
            r(r"(``)", " $1 "),
            r(r#"([ (\[{<])""#, "$1 `` "),
            r(r"([:,])([^0-9])", " $1 $2"),
            r(r"([:,])$", " $1 "),
            r(r"\.\.\.", " ... "),
            r(r"[;@#$%&]", " $0 "),
            r(r#"([^\.])(\.)([\]\)}>"']*)[ \t\n\r\x0b\x0c]*$"#, "$1 $2$3 "),
            r(r"[?!]", " $0 "),
            r(r"([^'])' ", "$1 ' "),
            r(r"[\]\[\(\)\{\}<>]", " $0 "),
            r(r"--", " -- "),
        ];
        let after = vec![
            r(r#"""#, " '' "),
            r(r"(\S)('')", "$1 $2 "),
            r(r"([^' ])('[sS]|'[mM]|'[dD]|') ", "$1 $2 "),
            r(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "$1 $2 "),
        ];
        let contractions = vec![
            r(r"(?i)\b(can)(not)\b", " $1 $2 "),
            r(r"(?i)\b(d)('ye)\b", " $1 $2 "),
            r(r"(?i)\b(gim)(me)\b", " $1 $2 "),
            r(r"(?i)\b(gon)(na)\b", " $1 $2 "),
            r(r"(?i)\b(got)(ta)\b", " $1 $2 "),
            r(r"(?i)\b(lem)(me)\b", " $1 $2 "),
            r(r"(?i)\b(mor)('n)\b", " $1 $2 "),
            r(r"(?i)\b(wan)(na)[ \t\n\r\x0b\x0c]", " $1 $2 "),
            r(r"(?i) ('t)(is)\b", " $1 $2 "),
            r(r"(?i) ('t)(was)\b", " $1 $2 "),
        ];
        [before, after, contractions]
    })
}

/// nltk 3.2.5 `TreebankWordTokenizer().tokenize(sentence)`.
fn treebank(sentence: &str) -> Vec<String> {
    let [before, after, contractions] = treebank_rules();
    let mut t = sentence.to_string();
    for Rule(re, s) in before {
        t = re.replace_all(&t, *s).into_owned();
    }
    t = format!(" {t} ");
    for Rule(re, s) in after.iter().chain(contractions) {
        t = re.replace_all(&t, *s).into_owned();
    }
    t.split_whitespace().map(str::to_string).collect()
}

/// nltk 3.2.5 `word_tokenize(text)` with an untrained Punkt sentence splitter.
pub fn word_tokenize(text: &str) -> Vec<String> {
    sentences(text).into_iter().flat_map(treebank).collect()
}

// ---------------------------------------------------------------------------------------------
// The CHAIR vocabulary.

pub struct Vocab {
    objects: HashSet<String>,
    node: HashMap<String, String>,
    double: HashMap<String, String>,
}

/// The words of one caption, as chair.py's `caption_to_words` returns them.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionWords {
    /// The MSCOCO words mentioned (after singularize and double words).
    pub words: Vec<String>,
    /// Their node words (the first word of their synonym line).
    pub node_words: Vec<String>,
    /// All tokens after the double-word merge.
    pub double_words: Vec<String>,
}

impl Vocab {
    pub fn official() -> &'static Vocab {
        static V: OnceLock<Vocab> = OnceLock::new();
        V.get_or_init(|| {
            let mut objects = HashSet::new();
            let mut node = HashMap::new();
            for line in SYNONYMS.lines() {
                // chair.py: `s.strip().split(', ')`; items keep any other spaces (sic).
                let syn: Vec<&str> = line.trim().split(", ").collect();
                for s in &syn {
                    objects.insert(s.to_string());
                    node.insert(s.to_string(), syn[0].to_string());
                }
            }
            let mut double: HashMap<String, String> = DOUBLE_WORDS.iter().map(|w| (w.to_string(), w.to_string())).collect();
            for a in ANIMAL_WORDS {
                double.insert(format!("baby {a}"), a.into());
                double.insert(format!("adult {a}"), a.into());
            }
            for v in VEHICLE_WORDS {
                double.insert(format!("passenger {v}"), v.into());
            }
            double.insert("bow tie".into(), "tie".into());
            double.insert("toilet seat".into(), "toilet".into());
            double.insert("wine glas".into(), "wine glass".into());
            Vocab { objects, node, double }
        })
    }

    /// The node word of a COCO category name, if the synonyms list has it.
    pub fn node_of(&self, name: &str) -> Option<&str> {
        self.node.get(name).map(String::as_str)
    }

    pub fn caption_to_words(&self, caption: &str) -> CaptionWords {
        let words: Vec<String> = word_tokenize(&caption.to_lowercase()).iter().map(|w| singularize(w)).collect();
        let mut merged = Vec::with_capacity(words.len());
        let mut i = 0;
        while i < words.len() {
            let pair = words[i..(i + 2).min(words.len())].join(" ");
            if let Some(w) = self.double.get(&pair) {
                merged.push(w.clone());
                i += 2;
            } else {
                merged.push(words[i].clone());
                i += 1;
            }
        }
        let mut kept: Vec<String> = merged.clone();
        if kept.iter().any(|w| w == "toilet") && kept.iter().any(|w| w == "seat") {
            kept.retain(|w| w != "seat");
        }
        kept.retain(|w| self.objects.contains(w));
        let node_words = kept.iter().map(|w| self.node[w].clone()).collect();
        CaptionWords { words: kept, node_words, double_words: merged }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

pub struct Chair {
    items: Vec<Item>,
    /// Ground-truth node words per image id (as text).
    truth: HashMap<String, BTreeSet<String>>,
}

fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn array<'a>(v: &'a Value, path: &Path, field: &str) -> Result<&'a Vec<Value>> {
    v.get(field).and_then(Value::as_array).ok_or_else(|| Error::config(path, field, "missing or not an array"))
}

fn int_field(v: &Value, path: &Path, at: &str, field: &str) -> Result<i64> {
    v.get(field).and_then(Value::as_i64).ok_or_else(|| Error::config(path, format!("{at}: {field}"), "missing or not an integer"))
}

impl Chair {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let dir = super::bench::folder_of(data);
        let instances = files_with_prefix(&dir, "instances_");
        if instances.is_empty() {
            return Err(Error::Input(format!("{}: no COCO instances_*.json here", dir.display())));
        }
        let captions = files_with_prefix(&dir, "captions_");
        let vocab = Vocab::official();
        let images = image_root(&dir, image_folder, &["val2014", "../val2014", "images"]);
        let mut files: Vec<(i64, String)> = Vec::new();
        let mut truth: HashMap<String, BTreeSet<String>> = HashMap::new();
        for path in &instances {
            let v = read_json(path)?;
            let mut names: HashMap<i64, String> = HashMap::new();
            for (k, c) in array(&v, path, "categories")?.iter().enumerate() {
                let at = format!("categories[{k}]");
                let name = super::bench::str_field(c, path, &at, "name")?;
                let node = vocab
                    .node_of(name)
                    .ok_or_else(|| Error::config(path, format!("{at}: name"), format!("`{name}` is not in CHAIR's synonyms list")))?;
                names.insert(int_field(c, path, &at, "id")?, node.to_string());
            }
            for (k, im) in array(&v, path, "images")?.iter().enumerate() {
                let at = format!("images[{k}]");
                let id = int_field(im, path, &at, "id")?;
                files.push((id, super::bench::str_field(im, path, &at, "file_name")?.to_string()));
                truth.entry(id.to_string()).or_default();
            }
            for (k, a) in array(&v, path, "annotations")?.iter().enumerate() {
                let at = format!("annotations[{k}]");
                let id = int_field(a, path, &at, "image_id")?;
                let cat = int_field(a, path, &at, "category_id")?;
                let node = names.get(&cat).ok_or_else(|| Error::config(path, format!("{at}: category_id"), format!("{cat} is not a category")))?;
                truth.entry(id.to_string()).or_default().insert(node.clone());
            }
        }
        for path in &captions {
            let v = read_json(path)?;
            for (k, a) in array(&v, path, "annotations")?.iter().enumerate() {
                let at = format!("annotations[{k}]");
                let id = int_field(a, path, &at, "image_id")?;
                let cap = super::bench::str_field(a, path, &at, "caption")?;
                if let Some(t) = truth.get_mut(&id.to_string()) {
                    t.extend(vocab.caption_to_words(cap).node_words);
                }
            }
        }
        files.sort();
        files.dedup_by_key(|(id, _)| *id);
        let items = files
            .iter()
            .enumerate()
            .map(|(g, (id, name))| Item {
                key: id.to_string(),
                question_id: json!(id),
                prompt: PROMPT.to_string(),
                record_prompt: PROMPT.to_string(),
                image: Some(ImageRef::File(images.join(name))),
                extra: Map::new(),
                group: g,
            })
            .collect();
        Ok(Chair { items, truth })
    }
}

impl Benchmark for Chair {
    fn bench(&self) -> Bench {
        Bench::Chair
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn record_key(&self, fields: &Map<String, Value>) -> Option<String> {
        match fields.get("key") {
            Some(Value::String(k)) => Some(k.clone()),
            _ => fields.get("image_id").or_else(|| fields.get("question_id")).filter(|v| v.is_number() || v.is_string()).map(id_text),
        }
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let vocab = Vocab::official();
        let (mut caps, mut hall_caps, mut mentions, mut hall_mentions, mut empty) = (0usize, 0usize, 0usize, 0usize, 0usize);
        let mut sentences = Vec::new();
        for (i, r) in preds.matched(&self.items)? {
            // LURE's to_chair.py drops empty answers.
            if r.text.is_empty() {
                empty += 1;
                continue;
            }
            let key = &self.items[i].key;
            let gt = &self.truth[key];
            let w = vocab.caption_to_words(&r.text);
            let hall: Vec<Value> = w
                .words
                .iter()
                .zip(&w.node_words)
                .filter(|(_, n)| !gt.contains(*n))
                .map(|(w, n)| json!([w, n]))
                .collect();
            caps += 1;
            mentions += w.node_words.len();
            hall_mentions += hall.len();
            if !hall.is_empty() {
                hall_caps += 1;
            }
            sentences.push(json!({
                "image_id": self.items[i].question_id,
                "generated": w.node_words,
                "hallucinated": hall,
            }));
        }
        Ok(json!({
            "chair_s": ratio(hall_caps as f64, caps as f64),
            "chair_i": ratio(hall_mentions as f64, mentions as f64),
            "captions": caps,
            "hallucinated_captions": hall_caps,
            "mentions": mentions,
            "hallucinated_mentions": hall_mentions,
            "empty_answers": empty,
            "sentences": sentences,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singularize_quirks() {
        assert_eq!(singularize("dogs"), "dog");
        assert_eq!(singularize("glasses"), "glass");
        // Hence chair.py's "wine glas" double word.
        assert_eq!(singularize("glass"), "glas");
        assert_eq!(singularize("bus"), "bu");
        assert_eq!(singularize("people"), "person");
        assert_eq!(singularize("ep"), "ep");
        assert_eq!(singularize("dogs'"), "dog's");
    }

    #[test]
    fn tokenizer_periods() {
        assert_eq!(word_tokenize("a cat. a dog."), ["a", "cat", ".", "a", "dog", "."]);
        assert_eq!(word_tokenize("has 2. three"), ["has", "2.", "three"]);
        assert_eq!(word_tokenize("the dog's bowl, and cannot"), ["the", "dog", "'s", "bowl", ",", "and", "can", "not"]);
    }
}
