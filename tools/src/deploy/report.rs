//! `device bench --json` output -> a readable latency report. The keys are printed as they come
//! (`p50_ms`, `throughput_fps`, `stages`, ...): nothing here depends on their names.

use serde_json::Value;

/// The JSON object in `device bench` output: the whole stdout, or else the last line that is one
/// (so a banner or log lines on stdout do no harm).
pub fn find_json(stdout: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
        return Some(v);
    }
    stdout.lines().rev().find_map(|l| match serde_json::from_str::<Value>(l.trim()) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    })
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.abs() >= 1000.0 => format!("{x:.1}"),
            Some(x) if n.is_f64() && x.abs() >= 0.001 => format!("{x:.3}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn render(out: &mut String, v: &Value, indent: usize) {
    let Value::Object(map) = v else {
        out.push_str(&format!("{:indent$}{}\n", "", scalar(v)));
        return;
    };
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0).max(12);
    for (k, v) in map {
        match v {
            Value::Object(_) => {
                out.push_str(&format!("{:indent$}{k}:\n", ""));
                render(out, v, indent + 2);
            }
            Value::Array(items) if items.iter().any(|x| x.is_object() || x.is_array()) => {
                out.push_str(&format!("{:indent$}{k}:\n", ""));
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&format!("{:w$}[{i}]\n", "", w = indent + 2));
                    render(out, item, indent + 4);
                }
            }
            _ => out.push_str(&format!("{:indent$}{k:<width$}  {}\n", "", scalar(v))),
        }
    }
}

/// The report, one `key  value` line per entry, nested objects indented.
pub fn pretty(v: &Value) -> String {
    let mut out = String::new();
    render(&mut out, v, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_prints_json() {
        let stdout = "loading model\n{\"p50_ms\": 12.3456, \"iters\": 50, \"stages\": {\"inference_ms\": 10.0}, \"cpu_features\": [\"asimd\", \"asimdhp\"]}\n";
        let v = find_json(stdout).unwrap();
        let text = pretty(&v);
        assert!(text.contains("p50_ms"), "{text}");
        assert!(text.contains("12.346"), "{text}");
        assert!(text.contains("stages:\n    inference_ms"), "{text}");
        assert!(text.contains("asimd, asimdhp"), "{text}");
        assert!(find_json("no json here\n").is_none());
        let pretty_printed = serde_json::to_string_pretty(&v).unwrap();
        assert_eq!(find_json(&pretty_printed), Some(v));
    }
}
