//! Printing: aligned tables for people, JSON for programs, errors on stderr. Output to a closed
//! pipe (`selene-kms audit tail | head -1`) ends the process quietly, with status 141.

use std::io::Write;

/// `println!` for command output: a closed stdout ends the process quietly (see [`write()`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// The exit status of a process that wrote to a closed pipe: a shell's for death by SIGPIPE.
/// Never 0: `selene-kms audit verify | head -1` must not turn a broken chain into a success.
const CLOSED_PIPE: i32 = 128 + 13;

/// Writes to stdout. Whoever reads it stopped reading when the pipe is closed, so there is
/// nobody left to tell: the process ends without a word, as a shell tool killed by SIGPIPE.
pub(crate) fn write(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(CLOSED_PIPE);
    }
}

/// Prints an error line on stderr.
pub(crate) fn fail(message: &str) {
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// Prints a JSON value on stdout.
pub(crate) fn json(value: &serde_json::Value) {
    say!(
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
        say!("{}", text.join("  ").trim_end());
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
