//! job -> **ports**: the `--port P,Q,R-S` list a job needs.

/// The most ports one list may name: a range is for a handful of
/// services, not a sweep of the host.
pub const MAX_PORTS: usize = 1024;

/// Parses `8080,9090,7000-7010` into sorted, distinct ports. Errors name
/// the part that is wrong and how to write it.
pub fn parse_list(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Err("--port is empty: give ports like 8080,9090 or a range like 7000-7010".into());
    }
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "--port '{s}' has an empty entry: separate ports with single commas, like 8080,9090"
            ));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                if a.trim().is_empty() || b.trim().is_empty() {
                    return Err(format!(
                        "--port: range '{part}' needs both ends: write it like 7000-7010"
                    ));
                }
                let (lo, hi) = (one(a.trim(), part)?, one(b.trim(), part)?);
                if lo > hi {
                    return Err(format!(
                        "--port: range '{part}' runs backwards: write it low to high, like {hi}-{lo}"
                    ));
                }
                out.extend(lo..=hi);
            }
            None => out.push(one(part, part)?),
        }
        if out.len() > MAX_PORTS {
            return Err(format!(
                "--port '{s}' names more than {MAX_PORTS} ports: name the ports the job uses"
            ));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn one(p: &str, part: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(0) => Err(format!(
            "--port: port 0 in '{part}' is not a port one can hold (the kernel picks one): give 1-65535"
        )),
        Ok(n) if n <= 65535 => Ok(n as u16),
        Ok(n) => Err(format!(
            "--port: {n} in '{part}' is out of range: ports are 1-65535"
        )),
        Err(_) => Err(format!(
            "--port: '{p}' in '{part}' is not a port number: give 1-65535, a list like 8080,9090 or a range like 7000-7010"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_list("80").unwrap(), [80]);
        assert_eq!(parse_list("9090, 80,80").unwrap(), [80, 9090]);
        assert_eq!(parse_list("7000-7002,1").unwrap(), [1, 7000, 7001, 7002]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert!(parse_list("80-").unwrap_err().contains("needs both ends"));
        assert!(parse_list("-80").unwrap_err().contains("needs both ends"));
        assert!(parse_list("0").unwrap_err().contains("port 0"));
        assert!(parse_list("1-0").unwrap_err().contains("port 0"));
        assert!(parse_list("70000").unwrap_err().contains("out of range"));
        assert!(parse_list("90-80").unwrap_err().contains("backwards"));
        assert!(parse_list("80,,81").unwrap_err().contains("empty entry"));
        assert!(parse_list("http")
            .unwrap_err()
            .contains("not a port number"));
        assert!(parse_list("").unwrap_err().contains("empty"));
        assert!(parse_list("1-65535").unwrap_err().contains("more than"));
    }
}
