//! The command line that retries a `create` by hand: the same request, the same key.

use super::args::{
    ClientArgs, CreateArgs, DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT,
};

/// `program deploy create ... --key key`, quoted for a POSIX shell: every setting that
/// shaped the request spelt out (the server always, so that the line means the same in a
/// shell whose `BACKEND_URL` differs), except the token, which is never printed.
pub fn create_command(
    program: &str,
    client: &ClientArgs,
    create: &CreateArgs,
    key: &str,
) -> String {
    let mut words: Vec<String> = vec![program.to_owned(), "deploy".into(), "create".into()];
    let mut option = |name: &str, value: &str| {
        // `--name -x` would read `-x` as a flag: a value that looks like one is attached.
        if value.starts_with('-') {
            words.push(format!("--{name}={value}"));
        } else {
            words.extend([format!("--{name}"), value.to_owned()]);
        }
    };
    let server = client.server.as_str();
    // `Url` writes `http://host:port/`; give it back as it is usually typed.
    let server = if client.server.path() == "/" {
        server.trim_end_matches('/')
    } else {
        server
    };
    option("server", server);
    option("project", &create.project);
    option("environment", &create.environment);
    option("ref", &create.git_ref);
    if let Some(description) = &create.description {
        option("description", description);
    }
    option("key", key);
    if client.max_attempts != DEFAULT_MAX_ATTEMPTS {
        option("max-attempts", &client.max_attempts.to_string());
    }
    if client.timeout != DEFAULT_TIMEOUT {
        option(
            "timeout",
            &humantime::format_duration(client.timeout).to_string(),
        );
    }
    if client.deadline != DEFAULT_DEADLINE {
        option(
            "deadline",
            &humantime::format_duration(client.deadline).to_string(),
        );
    }
    let quoted: Vec<String> = words.iter().map(|word| quote(word)).collect();
    quoted.join(" ")
}

/// `word` as one POSIX shell word: as is when it is plainly safe, else in single quotes.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::DEFAULT_SERVER;

    fn client(server: &str) -> ClientArgs {
        ClientArgs {
            server: server.parse().unwrap(),
            token: Some("bk_secret".to_owned()),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
        }
    }

    fn create(description: Option<&str>) -> CreateArgs {
        CreateArgs {
            project: "api".to_owned(),
            environment: "production".to_owned(),
            git_ref: "v1.4.2".to_owned(),
            description: description.map(str::to_owned),
            key: None,
        }
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("v1.4.2"), "v1.4.2");
        assert_eq!(quote("/usr/bin/backend"), "/usr/bin/backend");
        assert_eq!(quote("http://h:1/x"), "http://h:1/x");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME `x` \"y\""), "'$HOME `x` \"y\"'");
    }

    #[test]
    fn spells_out_the_request_but_never_the_token() {
        let line = create_command(
            "backend",
            &client("http://10.0.0.1:9000"),
            &create(Some("it's big")),
            "k-1",
        );
        assert_eq!(
            line,
            "backend deploy create --server http://10.0.0.1:9000 --project api --environment \
             production --ref v1.4.2 --description 'it'\\''s big' --key k-1"
        );
        assert!(!line.contains("bk_secret"));
    }

    #[test]
    fn values_that_look_like_flags_are_attached() {
        let mut create = create(Some("- hotfix"));
        create.project = "-api-".to_owned();
        assert_eq!(
            create_command("b", &client(DEFAULT_SERVER), &create, "-k"),
            "b deploy create --server http://127.0.0.1:8080 --project=-api- --environment \
             production --ref v1.4.2 '--description=- hotfix' --key=-k"
        );
    }

    #[test]
    fn names_settings_that_differ_from_the_defaults() {
        let mut client = client(DEFAULT_SERVER);
        assert_eq!(
            create_command("b", &client, &create(None), "k"),
            "b deploy create --server http://127.0.0.1:8080 --project api --environment \
             production --ref v1.4.2 --key k"
        );
        client.max_attempts = 2;
        client.timeout = std::time::Duration::from_millis(1500);
        client.server = "https://api.example.com/base/".parse().unwrap();
        assert_eq!(
            create_command("b", &client, &create(None), "a key"),
            "b deploy create --server https://api.example.com/base/ --project api --environment \
             production --ref v1.4.2 --key 'a key' --max-attempts 2 --timeout '1s 500ms'"
        );
    }
}
