//! CSR's text cleaning of candidate sentences (official inference_csr/utils.py, commit 1e120b2):
//! `clean_text` (the characters kept, L131-134) and `clean_tree`'s junk tests (L144-185). The
//! regexes use back-references, which the `regex` crate lacks, so each is written out by hand
//! with the same matches (see each function).

/// `clean_text`: drop every character outside `[\w\s.,?!;:'"-()/\[\]{}+$€£*=/><==!%°^™©®♫♪π√]`.
/// In that class `"-(` is the range U+0022..U+0028 (`"#$%&'(`), then `)` and `/`. (Expected
/// strings in the tests come from Python's `re.sub` with the official pattern.) `\w` is Python's Unicode word
/// character (alphanumeric or `_`), `\s` Unicode whitespace.
pub fn clean_text(s: &str) -> String {
    s.chars().filter(|&c| keep(c)).collect()
}

fn keep(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c.is_whitespace() || ('\u{22}'..='\u{28}').contains(&c) || ".,?!;:)/[]{}+$€£*=><%°^™©®♫♪π√".contains(c)
}

/// `clean_tree`'s test: true when a child's (cleaned) new text is junk, i.e. it has Hangul, emoji,
/// Cyrillic or kana, two `&nbsp;` in a row, a repeated word or character, one of the literal junk
/// strings, or more than `max_newlines` newlines.
pub fn is_junk(text: &str, max_newlines: usize) -> bool {
    special_chars(text) || repeated_phrase(text, 6) || repeated_char(text, 11) || literal_junk(text) || text.matches('\n').count() > max_newlines
}

/// Hangul `[\u3130-\u318F\uAC00-\uD7AF]`, emoji `[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF
/// \U0001F680-\U0001F6FF\U0001F700-\U0001F77F]`, Cyrillic `[\u0400-\u04FF]`, kana
/// `[\u3040-\u309F\u30A0-\u30FF]`, or `(&nbsp;){2,}`.
fn special_chars(text: &str) -> bool {
    let bad = |c: char| {
        let u = c as u32;
        (0x3130..=0x318F).contains(&u)
            || (0xAC00..=0xD7AF).contains(&u)
            || (0x1F600..=0x1F64F).contains(&u)
            || (0x1F300..=0x1F5FF).contains(&u)
            || (0x1F680..=0x1F6FF).contains(&u)
            || (0x1F700..=0x1F77F).contains(&u)
            || (0x0400..=0x04FF).contains(&u)
            || (0x3040..=0x30FF).contains(&u)
    };
    text.chars().any(bad) || text.contains("&nbsp;&nbsp;")
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `(\b\w+\b)(?:\s+\1){n-1,}`: a whole word, then n-1 more times whitespace followed by the same
/// characters (the copies need not end at a word boundary, as `\1` matches a prefix).
fn repeated_phrase(text: &str, n: usize) -> bool {
    let cs: Vec<char> = text.chars().collect();
    for i in 0..cs.len() {
        if !is_word(cs[i]) || (i > 0 && is_word(cs[i - 1])) {
            continue;
        }
        let mut end = i;
        while end < cs.len() && is_word(cs[end]) {
            end += 1;
        }
        let word = &cs[i..end];
        let (mut at, mut copies) = (end, 0);
        loop {
            let mut j = at;
            while j < cs.len() && cs[j].is_whitespace() {
                j += 1;
            }
            if j == at || j + word.len() > cs.len() || &cs[j..j + word.len()] != word {
                break;
            }
            at = j + word.len();
            copies += 1;
        }
        if copies + 1 >= n {
            return true;
        }
    }
    false
}

/// `(.)\s*\1\s*\1...` with n copies: one character (not a newline) n times, whitespace allowed
/// between the copies.
fn repeated_char(text: &str, n: usize) -> bool {
    let cs: Vec<char> = text.chars().collect();
    for i in 0..cs.len() {
        let c = cs[i];
        if c == '\n' {
            continue;
        }
        let mut count = 1;
        let mut j = i + 1;
        if c.is_whitespace() {
            // `\s*` and the copies are all whitespace: n copies of c within the whitespace run.
            while j < cs.len() && cs[j].is_whitespace() && count < n {
                count += usize::from(cs[j] == c);
                j += 1;
            }
        } else {
            while count < n {
                while j < cs.len() && cs[j].is_whitespace() {
                    j += 1;
                }
                if j < cs.len() && cs[j] == c {
                    count += 1;
                    j += 1;
                } else {
                    break;
                }
            }
        }
        if count >= n {
            return true;
        }
    }
    false
}

/// The literal junk strings of `contains_repeated_phrases`.
fn literal_junk(text: &str) -> bool {
    ["ttttttttttt", "sssssssssss", ", , , , , , , , , , , , ,", "''''''''''"].iter().any(|p| text.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_keeps_the_official_class() {
        assert_eq!(clean_text("A cat™ sits — on a mat #1 (really) ~ `x` | y @z."), "A cat™ sits  on a mat #1 (really)  x  y z.");
        assert_eq!(clean_text("naïve café 東京 &nbsp; _a\\b"), "naïve café 東京 &nbsp; _ab");
    }

    #[test]
    fn junk_tests_follow_the_regexes() {
        assert!(!is_junk("A dog runs on the grass.", 5));
        assert!(is_junk("Привет", 5));
        assert!(is_junk("こんにちは", 5));
        assert!(is_junk("a &nbsp;&nbsp; b", 5));
        assert!(!is_junk("a &nbsp; b &nbsp; c", 5));
        assert!(is_junk("the the the the the the end", 5));
        assert!(!is_junk("the the the the the end", 5));
        // `\1` matches a prefix of the next word
        assert!(is_junk("go go go go go gone", 5));
        // a word inside another word is not a start (`\b`)
        assert!(!is_junk("ago go go go go go", 5));
        assert!(is_junk("ago go go go go go go", 5));
        assert!(is_junk("a a a a a a a a a a a", 5));
        assert!(is_junk("!!!!!!!!!!!", 5));
        assert!(!is_junk("!!!!!!!!!!", 5));
        assert!(repeated_phrase("x x x\nx x x", 6) && !repeated_phrase("x x x\nx x", 6));
        assert!(is_junk("1\n2\n3\n4\n5\n6\n7", 5));
        assert!(!is_junk("1\n2\n3\n4\n5\n6", 5));
        assert!(is_junk("''''''''''", 5));
    }
}
