//! The few Python built-ins the official scoring scripts lean on, with Python's semantics, so that a
//! ported rule gives the same answer on the same text: `str.strip()` / `str.split()` whitespace,
//! `float(s)`, `str(int(s))`, `repr(float)`, `round(x, n)`, and the Levenshtein distance of the
//! `Levenshtein` package (MathVista). Checked against CPython on random strings.

use std::sync::OnceLock;

use regex::Regex;

/// `str.isspace()`: Unicode White_Space plus the ASCII separators U+001C..U+001F.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.strip()`
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()` (no argument: runs of whitespace, no empty pieces).
pub fn split_ws(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// Whether `c` matches Python 3's `\d` on str patterns (Unicode category Nd). The `regex` crate's
/// Unicode `\d` is the same class.
pub fn is_decimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^\d$").expect("regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// Python's digit grouping in numeric literals: each `_` must sit between two ASCII digits.
/// Returns the text without them, or None when an underscore is misplaced.
fn drop_underscores(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' && !(i > 0 && b[i - 1].is_ascii_digit() && i + 1 < b.len() && b[i + 1].is_ascii_digit()) {
            return None;
        }
    }
    Some(s.replace('_', ""))
}

/// The decimal digit a Unicode Nd character stands for. Unicode encodes every decimal digit set as
/// 0..9 in consecutive code points (and abutting sets start at multiples of ten from the first), so
/// the value is the count of Nd characters just before it, modulo 10.
fn decimal_value(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    if !is_decimal(c) {
        return None;
    }
    let mut k = 0u32;
    let mut cp = c as u32;
    while cp > 0 && char::from_u32(cp - 1).is_some_and(is_decimal) {
        k += 1;
        cp -= 1;
    }
    Some((k % 10) as u8)
}

/// CPython's `_PyUnicode_TransformDecimalAndSpaceToASCII` before parsing a number: non-ASCII
/// digits become ASCII digits, non-ASCII whitespace a space; then C `isspace` characters are
/// stripped (so U+001C..U+001F, ASCII but not C whitespace, make the parse fail). None when another
/// non-ASCII character remains (the parse would fail).
fn number_text(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else if is_space(c) {
            out.push(' ');
        } else {
            out.push((b'0' + decimal_value(c)?) as char);
        }
    }
    Some(out.trim_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']).to_string())
}

/// `float(s)`: None where Python raises ValueError.
pub fn parse_float(s: &str) -> Option<f64> {
    let t = drop_underscores(&number_text(s)?)?;
    // Rust's grammar is Python's (sign, digits with optional fraction and exponent, `.5`, `5.`,
    // inf / infinity / nan in any case) apart from the underscores handled above.
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// `str(int(s))` for a base-10 string: None where Python raises ValueError. Works on the digits, so
/// any length is exact.
pub fn parse_int(s: &str) -> Option<String> {
    let t = drop_underscores(&number_text(s)?)?;
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, &t[..]),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(match (trimmed.is_empty(), neg) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{trimmed}"),
        (false, false) => trimmed.to_string(),
    })
}

/// `str(int(x))` for a float: truncation toward zero, printed exactly; None for inf / nan
/// (Python raises OverflowError / ValueError).
pub fn float_to_int_string(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    let t = x.trunc();
    if t == 0.0 {
        return Some("0".to_string());
    }
    // `{:.0}` prints the exact decimal value of an integral f64.
    Some(format!("{t:.0}"))
}

/// `repr(x)` / `str(x)` of a Python float: the shortest digits that round-trip, positional between
/// 1e-4 and 1e16 (with `.0` when integral), scientific (`1e+16`, `1.5e-05`) outside.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Python's repr (David Gay's dtoa, mode 0) gives the shortest digits that round-trip and, among
    // those, the nearest to the exact value (ties to even). Rust's `{:e}` gives a shortest string
    // too, but where two are equally near it may take the other one: reformat with that many
    // digits, correctly rounded, and keep it if it still round-trips.
    let a = x.abs();
    let shortest = format!("{a:e}");
    let n_digits = shortest.split_once('e').expect("`{:e}` has an exponent").0.chars().filter(char::is_ascii_digit).count();
    let nearest = format!("{a:.*e}", n_digits - 1);
    let sci = if nearest.parse::<f64>() == Ok(a) { nearest } else { shortest };
    let (mant, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("exponent");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if n <= exp + 1 {
            format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
        } else {
            format!("{}.{}", &digits[..(exp + 1) as usize], &digits[(exp + 1) as usize..])
        }
    } else {
        let m = if n > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits.clone() };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

/// `round(x, ndigits)` for a float and ndigits >= 0: the correctly rounded decimal (ties to even on
/// the exact binary value, as CPython's dtoa-based rounding), read back as a float.
pub fn round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.ndigits$}").parse().expect("formatted float parses")
}

/// Levenshtein edit distance over code points (unit costs), as `Levenshtein.distance`.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_number_parsing() {
        assert_eq!(parse_float(" 1.5\n"), Some(1.5));
        assert_eq!(parse_float("1_000.5"), Some(1000.5));
        assert_eq!(parse_float("1__0"), None);
        assert_eq!(parse_float("_1"), None);
        assert_eq!(parse_float("1,000"), None);
        assert_eq!(parse_float("12%"), None);
        assert_eq!(parse_float(".5"), Some(0.5));
        assert!(parse_float("-Infinity").unwrap().is_infinite());
        assert_eq!(parse_float(""), None);
        assert_eq!(parse_float("\u{a0}٣.٥"), Some(3.5));
        assert_eq!(parse_int("١٢"), Some("12".into()));
        assert_eq!(parse_int("𝟗"), Some("9".into()));
        assert_eq!(parse_int("²"), None);
        assert_eq!(parse_float("\u{1c}1.5"), None);
        assert_eq!(parse_int(" 007 "), Some("7".into()));
        assert_eq!(parse_int("-0"), Some("0".into()));
        assert_eq!(parse_int("+12"), Some("12".into()));
        assert_eq!(parse_int("12.0"), None);
        assert_eq!(parse_int("123456789012345678901234567890"), Some("123456789012345678901234567890".into()));
        assert_eq!(float_to_int_string(-3.9), Some("-3".into()));
        assert_eq!(float_to_int_string(-0.5), Some("0".into()));
        assert_eq!(float_to_int_string(1e20), Some("100000000000000000000".into()));
        assert_eq!(float_to_int_string(f64::NAN), None);
    }

    #[test]
    fn python_float_repr_and_round() {
        for (x, s) in [
            (1.0, "1.0"),
            (1.2, "1.2"),
            (-0.0, "-0.0"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1e16, "1e+16"),
            (1.2345e17, "1.2345e+17"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            // Two shortest strings are equally near (the value ends in ...782.25): the even one.
            (-869838580695782.2, "-869838580695782.2"),
        ] {
            assert_eq!(float_repr(x), s, "{x:e}");
        }
        // Ties go to even on the exact binary value: 0.125 is exact, 2.675 is 2.67499999...
        assert_eq!(round(0.125, 2), 0.12);
        assert_eq!(round(0.375, 2), 0.38);
        assert_eq!(round(2.675, 2), 2.67);
        assert_eq!(float_repr(round(3.0, 1)), "3.0");
        assert_eq!(float_repr(round(1.25, 1)), "1.2");
    }

    #[test]
    fn whitespace_and_distance() {
        assert_eq!(strip("\u{1f} a b\u{a0}"), "a b");
        assert_eq!(split_ws(" a \t b\n"), vec!["a", "b"]);
        assert!(is_decimal('7') && is_decimal('٣') && !is_decimal('²') && !is_decimal('a'));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("145°", "145"), 1);
    }
}
