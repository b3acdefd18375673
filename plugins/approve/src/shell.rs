//! Shell rules, over the words of each simple command: a line is split at `;`, `&&`, `||`,
//! `|`, `&`, newlines, `(`, `)`, `$(` and backquotes, words are unquoted as the shell would,
//! and wrappers (`sudo`, `env`, `nohup`, `time`, `xargs`, `VAR=value`, `sh -c '…'`) are looked
//! through. It reads what a person types; it is no sandbox for a determined one (`eval`,
//! variables holding commands), which is what reviews of the recording are for.

use crate::sql;

/// The built-in shell rules.
pub const RULES: &[(&str, &str)] = &[
    ("rm-recursive", "recursive rm of an absolute or home path"),
    ("mkfs", "mkfs formats a file system"),
    ("dd-device", "dd writing to a device"),
    ("shutdown", "shutdown or reboot"),
    ("kubectl-delete", "kubectl delete"),
    ("terraform-destroy", "terraform destroy"),
    ("psql-sql", "risky SQL in psql -c"),
];

/// One simple command: its words, unquoted.
#[derive(Debug, PartialEq, Eq)]
pub struct Command {
    pub words: Vec<String>,
}

/// What a rule found: the rule and the reason told to the user.
pub type Hit = sql::Hit;

/// Splits `line` into simple commands, wrappers removed.
pub fn commands(line: &str) -> Vec<Command> {
    let mut out = Vec::new();
    for words in split(line) {
        unwrap_into(words, &mut out, 0);
    }
    out
}

fn unwrap_into(mut words: Vec<String>, out: &mut Vec<Command>, depth: usize) {
    loop {
        let Some(first) = words.first() else { return };
        let name = basename(first);
        let skip = if first.contains('=') && !first.starts_with('=') && !first.starts_with('-') {
            1 // VAR=value
        } else {
            match name {
                "sudo" | "doas" | "env" | "nohup" | "time" | "nice" | "exec" | "command"
                | "xargs" | "builtin" | "stdbuf" => {
                    // The wrapper and its options (and an option's value where it takes one).
                    let mut i = 1;
                    while let Some(w) = words.get(i) {
                        if w.starts_with('-') {
                            let takes_value = matches!(
                                (name, w.as_str()),
                                ("sudo", "-u" | "-g" | "-C" | "-D" | "-h" | "-p" | "-U")
                                    | ("nice", "-n")
                                    | ("xargs", "-n" | "-I" | "-L" | "-P" | "-d" | "-s")
                            );
                            i += if takes_value { 2 } else { 1 };
                        } else if name == "env" && w.contains('=') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i
                }
                "timeout" => 2,
                // Reserved words that may begin a command's place.
                "{" | "!" | "if" | "then" | "else" | "elif" | "do" | "while" | "until" => 1,
                "sh" | "bash" | "zsh" | "dash" | "ksh" if depth < 4 => {
                    if let Some(i) = words.iter().position(|w| w == "-c")
                        && let Some(script) = words.get(i + 1)
                    {
                        for inner in split(script) {
                            unwrap_into(inner, out, depth + 1);
                        }
                        return;
                    }
                    0
                }
                _ => 0,
            }
        };
        if skip == 0 {
            break;
        }
        words.drain(..skip.min(words.len()));
    }
    if !words.is_empty() {
        out.push(Command { words });
    }
}

impl Command {
    fn name(&self) -> &str {
        basename(&self.words[0])
    }

    fn args(&self) -> &[String] {
        &self.words[1..]
    }

    /// The built-in rules this command matches.
    pub fn hits(&self) -> Vec<Hit> {
        let hit = |rule| Hit::of(RULES, rule);
        let args = self.args();
        let name = self.name();
        let mut hits = Vec::new();
        match name {
            "rm" => {
                let mut options_end = false;
                let (mut recursive, mut risky_path) = (false, false);
                for a in args {
                    if !options_end && a == "--" {
                        options_end = true;
                    } else if !options_end && a.starts_with("--") {
                        recursive |= a == "--recursive";
                    } else if !options_end && a.starts_with('-') && a.len() > 1 {
                        recursive |= a.contains('r') || a.contains('R');
                    } else {
                        risky_path |= is_absolute_or_home(a);
                    }
                }
                if recursive && risky_path {
                    hits.push(hit("rm-recursive"));
                }
            }
            _ if name.starts_with("mkfs") => hits.push(hit("mkfs")),
            "dd" if args.iter().any(|a| a.starts_with("of=/dev/")) => hits.push(hit("dd-device")),
            "shutdown" | "reboot" | "halt" | "poweroff" => hits.push(hit("shutdown")),
            "systemctl"
                if args
                    .iter()
                    .any(|a| matches!(a.as_str(), "poweroff" | "reboot" | "halt" | "kexec")) =>
            {
                hits.push(hit("shutdown"))
            }
            "init" | "telinit" if args.iter().any(|a| a == "0" || a == "6") => {
                hits.push(hit("shutdown"))
            }
            "kubectl" | "oc" if first_operand(args) == Some("delete") => {
                hits.push(hit("kubectl-delete"))
            }
            "terraform" | "tofu" => {
                let verb = first_operand(args);
                let destroy = verb == Some("destroy")
                    || (verb == Some("apply")
                        && args.iter().any(|a| a == "-destroy" || a == "--destroy"));
                if destroy {
                    hits.push(hit("terraform-destroy"));
                }
            }
            "psql" => {
                for sql_text in psql_commands(args) {
                    match sql::statements(&sql_text) {
                        Ok(statements) => {
                            for h in statements.iter().flat_map(|s| s.hits()) {
                                hits.push(Hit {
                                    rule: "psql-sql",
                                    reason: format!("psql -c: {}", h.reason),
                                });
                            }
                        }
                        Err(e) => hits.push(Hit {
                            rule: "psql-sql",
                            reason: format!("psql -c: the SQL cannot be read ({e})"),
                        }),
                    }
                }
            }
            _ => {}
        }
        hits
    }
}

/// The first argument that is not an option (kubectl's and terraform's verb). Options that
/// take a value as the next word (`-n ns`) are skipped with it.
fn first_operand(args: &[String]) -> Option<&str> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') {
            return Some(a);
        }
        let takes_value = !a.contains('=')
            && matches!(
                a.as_str(),
                "-n" | "--namespace"
                    | "--context"
                    | "--kubeconfig"
                    | "-s"
                    | "--server"
                    | "--cluster"
                    | "--user"
                    | "-chdir"
            );
        i += if takes_value { 2 } else { 1 };
    }
    None
}

/// The SQL given to psql with `-c SQL`, `-cSQL`, `--command SQL` or `--command=SQL`.
fn psql_commands(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "-c" || a == "--command" {
            if let Some(sql) = args.get(i + 1) {
                out.push(sql.clone());
            }
            i += 2;
            continue;
        }
        if let Some(sql) = a.strip_prefix("--command=") {
            out.push(sql.into());
        } else if let Some(sql) = a.strip_prefix("-c")
            && !a.starts_with("--")
            && !sql.is_empty()
        {
            out.push(sql.into());
        }
        i += 1;
    }
    out
}

fn is_absolute_or_home(path: &str) -> bool {
    // `~` and `~user`, with or without more path.
    path.starts_with('/')
        || path.starts_with('~')
        || path.starts_with("$HOME")
        || path.starts_with("${HOME}")
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// The words of each simple command in `line`, with quotes and backslashes resolved.
fn split(line: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(&next) = chars.peek()
                                && matches!(next, '"' | '\\' | '$' | '`')
                            {
                                word.push(next);
                                chars.next();
                            } else {
                                word.push('\\');
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => word.push(c),
                }
            }
            '#' if !in_word => {
                // A comment, to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                end_word(&mut word, &mut in_word, &mut words);
                commands.push(std::mem::take(&mut words));
            }
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut words),
            ';' | '&' | '|' | '\n' | '(' | ')' | '`' => {
                end_word(&mut word, &mut in_word, &mut words);
                commands.push(std::mem::take(&mut words));
            }
            '$' if chars.peek() == Some(&'(') => {
                end_word(&mut word, &mut in_word, &mut words);
                commands.push(std::mem::take(&mut words));
                chars.next();
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut words);
    commands.push(words);
    commands.retain(|c| !c.is_empty());
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(line: &str) -> Vec<&'static str> {
        commands(line)
            .iter()
            .flat_map(|c| c.hits())
            .map(|h| h.rule)
            .collect()
    }

    #[test]
    fn recursive_rm_of_absolute_or_home_paths() {
        assert_eq!(rules("rm -rf /tmp/scratch"), ["rm-recursive"]);
        assert_eq!(rules("rm -r -f ~/work"), ["rm-recursive"]);
        assert_eq!(rules("rm --recursive $HOME"), ["rm-recursive"]);
        assert_eq!(rules("/bin/rm -Rf '/var/lib/x'"), ["rm-recursive"]);
        assert_eq!(rules("sudo -u root rm -fr /srv"), ["rm-recursive"]);
        assert_eq!(rules("cd /tmp && rm -rf /tmp/x; ls"), ["rm-recursive"]);
        assert_eq!(rules("echo $(rm -rf /x)"), ["rm-recursive"]);
        assert_eq!(rules("bash -c 'rm -rf /x'"), ["rm-recursive"]);
        assert_eq!(rules("FOO=1 nohup rm -rf ~"), ["rm-recursive"]);
        assert!(rules("rm -rf build").is_empty());
        assert!(rules("rm /tmp/file").is_empty());
        assert!(rules("echo 'rm -rf /'").is_empty());
        assert!(rules("echo rm -rf / # not run").is_empty());
        assert!(rules("# rm -rf /").is_empty());
        assert_eq!(rules("if true; then rm -rf /x; fi"), ["rm-recursive"]);
        assert_eq!(rules("{ rm -rf /x; }"), ["rm-recursive"]);
    }

    #[test]
    fn other_rules() {
        assert_eq!(rules("mkfs.ext4 /dev/sdb1"), ["mkfs"]);
        assert_eq!(rules("dd if=x.img of=/dev/sda bs=1M"), ["dd-device"]);
        assert!(rules("dd if=/dev/zero of=x.img").is_empty());
        assert_eq!(rules("sudo shutdown -h now"), ["shutdown"]);
        assert_eq!(rules("systemctl reboot"), ["shutdown"]);
        assert!(rules("systemctl restart nginx").is_empty());
        assert_eq!(rules("kubectl -n prod delete pod x"), ["kubectl-delete"]);
        assert!(rules("kubectl get pods").is_empty());
        assert_eq!(
            rules("terraform destroy -auto-approve"),
            ["terraform-destroy"]
        );
        assert_eq!(rules("terraform apply -destroy"), ["terraform-destroy"]);
        assert!(rules("terraform plan").is_empty());
        assert_eq!(rules("psql -h db -c 'DROP TABLE users'"), ["psql-sql"]);
        assert_eq!(rules("psql --command=\"delete from t\""), ["psql-sql"]);
        assert!(rules("psql -c 'SELECT 1'").is_empty());
    }
}
