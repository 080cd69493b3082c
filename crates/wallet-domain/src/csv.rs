//! CSV lines (RFC 4180, CRLF-terminated, UTF-8) with spreadsheet formula
//! injection defused, for every CSV export (transactions, ledger, audit).
//!
//! Architecture Invariant: base layer; depends on nothing in this crate.

/// One CSV line of `fields` (RFC 4180, CRLF-terminated).
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line =
        String::with_capacity(fields.iter().map(|f| f.as_ref().len() + 1).sum::<usize>() + 2);
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_csv_field(&mut line, field.as_ref());
    }
    line.push_str("\r\n");
    line
}

/// Appends `text` as one RFC 4180 field. A field a spreadsheet would run as a
/// formula (leading `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'` and
/// quoted, as OWASP advises; none of today's columns can start that way.
fn push_csv_field(out: &mut String, text: &str) {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let needs_quotes = formula || text.contains([',', '"', '\r', '\n']);
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}
