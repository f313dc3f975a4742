//! Rows of the Markdown and CSV tables every report writes, formatted in one place.

/// A Markdown table row: `| a | b | c |`.
pub fn md_row<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> String {
    let mut s = String::from("|");
    for c in cells {
        s.push(' ');
        s.push_str(c.as_ref());
        s.push_str(" |");
    }
    s
}

/// A CSV line (no cell holds a comma or a quote: names, numbers and protocol words).
pub fn csv_row<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> String {
    cells
        .into_iter()
        .map(|c| c.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_hand() {
        assert_eq!(md_row(["a", "1.50", "–"]), "| a | 1.50 | – |");
        assert_eq!(csv_row(["m", "", "0.4900"]), "m,,0.4900");
    }
}
