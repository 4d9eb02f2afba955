//! The pure parts of the layouts: reading a label under its convention, naming the
//! preferred response of a best-of-k row, and splitting two chat transcripts into their
//! shared history (the prompt) and their differing final replies (the items).

use serde::{Deserialize, Serialize};

use super::value::Val;

/// How a row's rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One comparison a row: `chosen`/`rejected`, or `left`/`right` with a `label`.
    #[default]
    Pairwise,
    /// A list of responses (or several response columns) and the `preferred` one: k − 1
    /// pairs, the preferred over each other.
    BestOfK,
    /// One row per (rater, prompt, response) with a `score` (pairs within each rater and
    /// group whose scores differ by at least `min_gap`), or a `preferred` flag (the flagged
    /// response over each other one of its group).
    Ratings,
}

/// What a pairwise `label` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelConvention {
    /// The index of the preferred item: 0 the left, 1 the right (`choice`).
    Index,
    /// −1 the left is preferred, +1 the right, 0 a tie (the store's own convention).
    Sign,
    /// Two numbers, one per side (`label: [label_0, label_1]`): the higher wins, equal
    /// ones (0.5/0.5) are a tie.
    Scores,
}

impl LabelConvention {
    /// The values it accepts, for messages.
    pub fn expects(self) -> &'static str {
        match self {
            LabelConvention::Index => "0 (left preferred) or 1 (right preferred)",
            LabelConvention::Sign => "-1 (left preferred), +1 (right preferred) or 0 (a tie)",
            LabelConvention::Scores => "two numbers, the higher one preferred",
        }
    }
}

/// What a row's label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Left,
    Right,
    /// No preference: the row is dropped and counted under this reason.
    Drop(&'static str),
}

/// Reason: no label.
pub const MISSING_LABEL: &str = "missing label";
/// Reason: a NaN label.
pub const NAN_LABEL: &str = "NaN label";
/// Reason: a tie.
pub const TIE: &str = "tie";

/// Reads a label (one value, or two under `Scores`). `Err` holds why the value is outside
/// the convention.
pub fn judge(conv: LabelConvention, label: &[&Val]) -> Result<Verdict, String> {
    if label.iter().any(|v| matches!(v, Val::Null)) {
        return Ok(Verdict::Drop(MISSING_LABEL));
    }
    let nums: Vec<f64> = label
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| format!("{} is not a number", v.show()))
        })
        .collect::<Result<_, _>>()?;
    if nums.iter().any(|x| x.is_nan()) {
        return Ok(Verdict::Drop(NAN_LABEL));
    }
    match (conv, nums.as_slice()) {
        (LabelConvention::Scores, [a, b]) => Ok(if a > b {
            Verdict::Left
        } else if b > a {
            Verdict::Right
        } else {
            Verdict::Drop(TIE)
        }),
        (LabelConvention::Index, [x]) if *x == 0.0 => Ok(Verdict::Left),
        (LabelConvention::Index, [x]) if *x == 1.0 => Ok(Verdict::Right),
        (LabelConvention::Sign, [x]) if *x == -1.0 => Ok(Verdict::Left),
        (LabelConvention::Sign, [x]) if *x == 1.0 => Ok(Verdict::Right),
        (LabelConvention::Sign, [x]) if *x == 0.0 => Ok(Verdict::Drop(TIE)),
        _ => Err(format!(
            "{} is outside the label convention: expected {}",
            label
                .iter()
                .map(|v| v.show())
                .collect::<Vec<_>>()
                .join(", "),
            conv.expects()
        )),
    }
}

/// The index of the preferred response among `k`: an integer index, a numeric string, a
/// response column's name (`first_turn_response_b`), or a letter name (`response_b`, `b`).
/// `Ok(None)`: no label. `Err`: a value that names none of them.
pub fn preferred_index(v: &Val, k: usize, names: &[String]) -> Result<Option<usize>, String> {
    let bad = || {
        // Letters name the first 26 responses only.
        let letters = match u8::try_from(k) {
            Ok(n @ 1..=26) => format!(", a letter a..{}", (b'a' + n - 1) as char),
            _ if k > 26 => ", a letter a..z for the first 26".to_string(),
            _ => String::new(),
        };
        format!(
            "{} names none of the {k} responses (expected an index 0..{}{letters}, or a column name)",
            v.show(),
            k.saturating_sub(1),
        )
    };
    let idx = match v {
        Val::Null => return Ok(None),
        Val::Int(i) => usize::try_from(*i).ok(),
        Val::Float(f) if f.fract() == 0.0 && *f >= 0.0 => Some(*f as usize),
        Val::Str(s) => {
            let t = s.trim();
            if let Some(i) = names.iter().position(|n| n == t) {
                Some(i)
            } else if let Ok(i) = t.parse::<usize>() {
                Some(i)
            } else {
                let last = t.rsplit(['_', '-', ' ']).next().unwrap_or(t);
                let mut chars = last.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii_alphabetic() => {
                        Some((c.to_ascii_lowercase() as u8 - b'a') as usize)
                    }
                    _ => None,
                }
            }
        }
        _ => None,
    };
    match idx {
        Some(i) if i < k => Ok(Some(i)),
        _ => Err(bad()),
    }
}

/// A chat transcript: a list of `{role, content}` records (content a string).
pub fn messages(v: &Val) -> Option<Vec<(String, String)>> {
    let Val::List(items) = v else { return None };
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|m| {
            let role = match m.lookup("role") {
                super::value::Found::Value(Val::Str(s)) => s.clone(),
                _ => return None,
            };
            let content = match m.lookup("content") {
                super::value::Found::Value(Val::Str(s)) => s.clone(),
                _ => return None,
            };
            Some((role, content))
        })
        .collect()
}

/// Messages as one text: `role: content` blocks separated by blank lines; a lone message is
/// its content.
pub fn render(msgs: &[(String, String)]) -> String {
    if let [(_, content)] = msgs {
        return content.clone();
    }
    msgs.iter()
        .map(|(r, c)| format!("{r}: {c}"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Two transcripts as (shared history, first's reply, second's reply): the messages both
/// start with are the history (None when they share none).
pub fn split_messages(
    a: &[(String, String)],
    b: &[(String, String)],
) -> (Option<String>, String, String) {
    let shared = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    // Keep at least one message on each side when one transcript is a prefix of the other.
    let shared = shared
        .min(a.len().saturating_sub(1))
        .min(b.len().saturating_sub(1));
    let history = (shared > 0).then(|| render(&a[..shared]));
    (history, render(&a[shared..]), render(&b[shared..]))
}

const ASSISTANT: &str = "\n\nAssistant:";

/// Whether a text is an HH-RLHF-style transcript.
pub fn is_hh(s: &str) -> bool {
    s.contains("Human:") && s.contains(ASSISTANT)
}

/// Two HH-RLHF transcripts as (shared history up to and including the last
/// `"\n\nAssistant:"` they share, first's reply, second's reply), replies trimmed. None when
/// they share no assistant turn.
pub fn split_hh(a: &str, b: &str) -> Option<(String, String, String)> {
    let mut common = a
        .char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8());
    // The shared text may end inside a word of the reply: cut at the last assistant marker.
    while !a.is_char_boundary(common) {
        common -= 1;
    }
    let cut = a[..common].rfind(ASSISTANT)? + ASSISTANT.len();
    Some((
        a[..cut].trim().to_string(),
        a[cut..].trim().to_string(),
        b[cut..].trim().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_their_convention() {
        use LabelConvention::*;
        let (z, o, m) = (Val::Int(0), Val::Int(1), Val::Int(-1));
        assert_eq!(judge(Index, &[&z]), Ok(Verdict::Left));
        assert_eq!(judge(Index, &[&Val::Str("1".into())]), Ok(Verdict::Right));
        assert!(judge(Index, &[&m]).is_err());
        assert_eq!(judge(Sign, &[&m]), Ok(Verdict::Left));
        assert_eq!(judge(Sign, &[&z]), Ok(Verdict::Drop(TIE)));
        assert!(judge(Sign, &[&Val::Int(2)]).is_err());
        let half = Val::Float(0.5);
        assert_eq!(judge(Scores, &[&half, &half]), Ok(Verdict::Drop(TIE)));
        assert_eq!(judge(Scores, &[&o, &z]), Ok(Verdict::Left));
        assert_eq!(
            judge(Scores, &[&Val::Float(f64::NAN), &z]),
            Ok(Verdict::Drop(NAN_LABEL))
        );
        assert_eq!(
            judge(Index, &[&Val::Null]),
            Ok(Verdict::Drop(MISSING_LABEL))
        );
    }

    #[test]
    fn preferred_responses_by_index_letter_or_name() {
        let names: Vec<String> = ["r_a", "r_b", "r_c", "r_d"].map(String::from).into();
        let s = |x: &str| Val::Str(x.into());
        assert_eq!(preferred_index(&s("response_b"), 4, &names), Ok(Some(1)));
        assert_eq!(preferred_index(&s("D"), 4, &names), Ok(Some(3)));
        assert_eq!(preferred_index(&s("r_c"), 4, &names), Ok(Some(2)));
        assert_eq!(preferred_index(&Val::Int(0), 4, &names), Ok(Some(0)));
        assert!(preferred_index(&s("response_e"), 4, &names).is_err());
        assert!(preferred_index(&Val::Int(4), 4, &names).is_err());
        assert_eq!(preferred_index(&Val::Null, 4, &names), Ok(None));
        // The message's letter range stops at z, however many responses a row holds
        // (best-of-256 rows used to overflow the letter's arithmetic).
        let e = preferred_index(&s("response_zz"), 4, &names).unwrap_err();
        assert!(e.contains("index 0..3, a letter a..d, or"), "{e}");
        let e = preferred_index(&Val::Int(300), 256, &[]).unwrap_err();
        assert!(
            e.contains("index 0..255, a letter a..z for the first 26, or"),
            "{e}"
        );
    }

    #[test]
    fn hh_transcripts_share_their_history() {
        let h = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant:";
        let a = format!("{h} Sure, one."); // differs in the first word of the reply
        let b = format!("{h} Sorry, no.");
        let (p, x, y) = split_hh(&a, &b).unwrap();
        assert_eq!(p, h.trim());
        assert_eq!((x.as_str(), y.as_str()), ("Sure, one.", "Sorry, no."));
        assert!(split_hh("no markers", "at all").is_none());
    }

    #[test]
    fn message_lists_share_their_history() {
        let m = |r: &str, c: &str| (r.to_string(), c.to_string());
        let a = vec![m("user", "q"), m("assistant", "good")];
        let b = vec![m("user", "q"), m("assistant", "bad")];
        let (p, x, y) = split_messages(&a, &b);
        assert_eq!(p.as_deref(), Some("q"));
        assert_eq!((x.as_str(), y.as_str()), ("good", "bad"));
    }
}
