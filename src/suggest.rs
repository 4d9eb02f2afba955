//! "Did you mean …?": the known name closest to one a user mistyped (a mapped column, a stage
//! kind). Shared by the readers and the pipeline parser, so that every such hint picks its
//! suggestion by one rule. (An unknown user id is never matched by likeness: a near id is
//! another person's; see `serve::scorer`.)

/// The name in `have` closest to `want` (edit distance over characters, see `distance`,
/// ignoring case), when it is close enough to be a likely typo: at most half the longer
/// name's length in characters apart (at least 1). Ties go to the first name in `have`.
/// `None` when nothing is that close.
pub fn closest<'a>(want: &str, have: impl Iterator<Item = &'a str>) -> Option<String> {
    let want_l = want.to_lowercase();
    have.map(|h| (distance(&want_l, &h.to_lowercase()), h))
        .filter(|(d, h)| *d <= (want.chars().count().max(h.chars().count()) / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, h)| h.to_string())
}

/// Edit distance in characters, a swap of two neighbours counting as one edit like an
/// insertion, a deletion or a substitution (the optimal string alignment distance: `bda` is
/// one edit from `bad`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i - 2, i - 1 and i of the table of distances between prefixes.
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 0..a.len() {
        let mut cur = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let sub = prev[j] + usize::from(a[i] != b[j]);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                cur[j + 1] = cur[j + 1].min(before[j - 1] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_name_is_a_likely_typo_or_none() {
        let have = ["worker", "choice", "summaries"];
        assert_eq!(
            closest("choise", have.iter().copied()).as_deref(),
            Some("choice")
        );
        assert_eq!(
            closest("Worker", have.iter().copied()).as_deref(),
            Some("worker")
        );
        assert_eq!(closest("zzzzzzzzzz", have.iter().copied()), None);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("bda", "bad"), 1);
        assert_eq!(distance("preference", "preferences"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("ca", "abc"), 3);
        assert_eq!(
            closest("bda", ["bad", "good"].into_iter()).as_deref(),
            Some("bad")
        );
    }
}
