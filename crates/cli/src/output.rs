//! Printing: aligned tables for people, JSON for programs, errors on stderr.

use std::io::Write;

/// Prints an error line on stderr.
pub(crate) fn fail(message: &str) {
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// Prints a JSON value on stdout.
pub(crate) fn json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints rows under headers, columns aligned.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A short, safe preview of an opaque ref.
pub(crate) fn short(r: &str) -> String {
    if r.len() > 24 {
        format!("{}…", &r[..24])
    } else {
        r.to_owned()
    }
}
