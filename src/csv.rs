//! CSV as Weir writes and reads it: RFC 4180 quoting of fields, and splitting a line.

/// A field, quoted if it holds a comma, a quote or a line break.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Splits a line into fields, honoring double quotes.
pub fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let current = fields.last_mut().expect("there is always a current field");
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => current.push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_round_trips() {
        assert_eq!(super::split(r#"a,"b,c","d""e""#), vec!["a", "b,c", "d\"e"]);
        let fields = ["plain", "a,b", "say \"hi\""];
        let line: Vec<String> = fields.iter().map(|f| super::field(f)).collect();
        assert_eq!(super::split(&line.join(",")), fields);
    }
}
