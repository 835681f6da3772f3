//! The console's HTML: escaping, the page frame, tables. Pages are rendered on the server;
//! the few lines of script below only refresh marked parts of a page and ask before an
//! action, so there is no build step and nothing fetched from elsewhere.

use crate::overview::Table;

/// Text made safe for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for a URL's query or path segment.
pub fn url(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#cfd6e4;text-decoration:none}header a.brand{color:#fff;font-weight:600}
main{padding:1em 1.2em}h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:.8em}
th,td{padding:.25em .6em;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #e3e6eb;padding:.6em;overflow:auto;max-width:70em}
form.inline{display:inline}button{margin-right:.3em}.muted{color:#6b7280}
.badge{padding:0 .4em;border-radius:.3em;background:#e3e6eb}.paused{background:#fde68a}
.error{color:#a40000}.notice{background:#dcfce7;padding:.4em .8em;margin-bottom:.8em}
label{margin-right:.8em}input[type=text]{width:12em}
";

/// Elements with `data-refresh` reload their content from that URL every `data-every`
/// milliseconds (while the page is visible); forms with `data-confirm` ask first.
const SCRIPT: &str = "
document.querySelectorAll('[data-refresh]').forEach(function (el) {
  setInterval(function () {
    if (document.hidden) return;
    fetch(el.dataset.refresh, {headers: {'Accept': 'text/html'}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) el.innerHTML = html; })
      .catch(function () {});
  }, Number(el.dataset.every) || 3000);
});
document.addEventListener('submit', function (e) {
  var question = e.target.dataset.confirm;
  if (question && !window.confirm(question)) e.preventDefault();
});
";

/// A whole page.
pub fn page(title: &str, read_only: bool, body: &str) -> String {
    let mode = if read_only { " <span class=\"badge\">read-only</span>" } else { "" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · eventq</title><style>{STYLE}</style></head><body>\
         <header><a class=\"brand\" href=\"/\">eventq</a><a href=\"/\">Overview</a>\
         <a href=\"/events\">Events</a>{mode}</header><main>{body}</main>\
         <script>{SCRIPT}</script></body></html>",
        title = esc(title)
    )
}

fn numeric(cell: &str) -> bool {
    !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit() || c == '-')
}

/// A table; `link` may turn a cell (its column, and the whole row) into a link.
pub fn table(t: &Table, id: &str, link: impl Fn(usize, &[String]) -> Option<String>) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for h in &t.headers {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr></thead><tbody>");
    if t.rows.is_empty() {
        out.push_str(&format!(
            "<tr><td colspan=\"{}\" class=\"muted\">none</td></tr>",
            t.headers.len()
        ));
    }
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric(cell) { " class=\"n\"" } else { "" };
            let content = match link(i, row) {
                Some(href) => format!("<a href=\"{}\">{}</a>", esc(&href), esc(cell)),
                None => esc(cell),
            };
            out.push_str(&format!(
                "<td data-column=\"{}\"{class}>{content}</td>",
                esc(t.headers.get(i).unwrap_or(&""))
            ));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn encodes_url_values() {
        assert_eq!(url("order.*"), "order.*");
        assert_eq!(url("a b&c"), "a+b%26c");
    }

    #[test]
    fn tables_escape_cells_and_mark_numbers() {
        let t = Table { headers: vec!["name", "n"], rows: vec![vec!["<x>".into(), "42".into()]] };
        let html = table(&t, "t", |_, _| None);
        assert!(html.contains("&lt;x&gt;"));
        assert!(html.contains("class=\"n\">42<"));
    }
}
