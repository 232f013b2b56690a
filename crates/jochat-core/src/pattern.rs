//! Account search patterns: `*` matches any run of characters, `?` exactly one; a pattern
//! without wildcards matches as a substring; empty or `*` matches every account. Matching
//! ignores ASCII case (usernames are ASCII). Every other character, SQL `LIKE`
//! metacharacters `%`, `_` and `\` included, stands for itself.

use crate::error::ChatError;
use crate::limits::PATTERN_CHARS_MAX;

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters, possibly empty.
    AnyRun,
    /// `?`: exactly one character.
    AnyOne,
    /// A character that must match itself, ignoring ASCII case.
    Literal(char),
}

/// A validated account search pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    /// Checks the request field `pattern`: at most 64 characters, no control characters.
    ///
    /// # Errors
    /// `InvalidArgument` on `pattern` naming the broken rule.
    pub fn new(raw: &str) -> Result<Self, ChatError> {
        Self::parse(raw, true)
    }

    /// Checks `raw` like [`Pattern::new`], but every character, `*` and `?` included, stands
    /// for itself and the whole text matches as a substring; only `*` alone (or nothing)
    /// matches every account. These are the prototype's search rules.
    ///
    /// # Errors
    /// `InvalidArgument` on `pattern` naming the broken rule.
    pub fn substring(raw: &str) -> Result<Self, ChatError> {
        if raw == "*" {
            return Self::new("");
        }
        Self::parse(raw, false)
    }

    /// Checks `raw` like [`Pattern::new`], read with the prototype socket server's rules
    /// (SQL `LIKE '%' || pattern || '%'`): `%` matches any run of characters, `_` exactly
    /// one, every other character, `*` and `?` included, stands for itself, and the whole
    /// matches as a substring.
    ///
    /// # Errors
    /// `InvalidArgument` on `pattern` naming the broken rule.
    pub fn like(raw: &str) -> Result<Self, ChatError> {
        Self::check(raw)?;
        let mut tokens = vec![Token::AnyRun];
        for c in raw.chars() {
            let token = match c {
                '%' => Token::AnyRun,
                '_' => Token::AnyOne,
                c => Token::Literal(c.to_ascii_lowercase()),
            };
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(token);
        }
        if tokens.last() != Some(&Token::AnyRun) {
            tokens.push(Token::AnyRun);
        }
        Ok(Self { tokens })
    }

    /// The rules every pattern's text follows, whatever its syntax.
    fn check(raw: &str) -> Result<usize, ChatError> {
        let chars = raw.chars().count();
        if chars > PATTERN_CHARS_MAX {
            return Err(ChatError::invalid(
                "pattern",
                format!("must be at most {PATTERN_CHARS_MAX} characters, got {chars}"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ChatError::invalid(
                "pattern",
                "must not contain control characters",
            ));
        }
        Ok(chars)
    }

    fn parse(raw: &str, wildcards: bool) -> Result<Self, ChatError> {
        let chars = Self::check(raw)?;
        let has_wildcard = wildcards && raw.contains(['*', '?']);
        let mut tokens = Vec::with_capacity(chars + 2);
        if !has_wildcard {
            // A plain pattern is a substring search: "li" finds "alice".
            tokens.push(Token::AnyRun);
        }
        for c in raw.chars() {
            let token = match c {
                '*' if wildcards => Token::AnyRun,
                '?' if wildcards => Token::AnyOne,
                c => Token::Literal(c.to_ascii_lowercase()),
            };
            // Runs of `*` mean the same as one; collapsing them keeps matching linear.
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(token);
        }
        if !has_wildcard && !raw.is_empty() {
            tokens.push(Token::AnyRun);
        }
        Ok(Self { tokens })
    }

    /// Whether this pattern matches every account.
    pub fn matches_all(&self) -> bool {
        self.tokens.iter().all(|t| *t == Token::AnyRun)
    }

    /// The SQL `LIKE` pattern to use with `ESCAPE '\'`, for a case-insensitive `LIKE`.
    pub fn to_like(&self) -> String {
        let mut like = String::with_capacity(self.tokens.len() + 4);
        for token in &self.tokens {
            match token {
                Token::AnyRun => like.push('%'),
                Token::AnyOne => like.push('_'),
                Token::Literal(c) => {
                    if matches!(c, '%' | '_' | '\\') {
                        like.push('\\');
                    }
                    like.push(*c);
                }
            }
        }
        if like.is_empty() {
            like.push('%');
        }
        like
    }

    /// Whether `name` matches, ignoring ASCII case.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().map(|c| c.to_ascii_lowercase()).collect();
        // Classic wildcard matching with one backtrack point: linear in practice because runs
        // of `*` were collapsed when the pattern was parsed.
        let (mut t, mut n) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(t) {
                Some(Token::AnyRun) => {
                    backtrack = Some((t, n));
                    t += 1;
                }
                Some(Token::AnyOne) => {
                    t += 1;
                    n += 1;
                }
                Some(Token::Literal(c)) if *c == name[n] => {
                    t += 1;
                    n += 1;
                }
                _ => match backtrack {
                    Some((bt, bn)) => {
                        t = bt + 1;
                        n = bn + 1;
                        backtrack = Some((bt, bn + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[t..].iter().all(|token| *token == Token::AnyRun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Pattern {
        Pattern::new(raw).expect("test patterns are valid")
    }

    #[test]
    fn wildcards_and_substrings() {
        assert!(p("").matches("anyone"));
        assert!(p("*").matches("anyone"));
        assert!(p("*").matches_all());
        assert!(p("li").matches("Alice"));
        assert!(!p("li").matches("bob"));
        assert!(p("a*").matches("alice"));
        assert!(!p("a*").matches("bob_a"));
        assert!(p("?ob").matches("Bob"));
        assert!(!p("?ob").matches("ob"));
        assert!(p("a*e").matches("alice"));
        assert!(p("*c*").matches("alice"));
        assert!(p("A**E").matches("alice"));
    }

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(p("%").to_like(), "%\\%%");
        assert_eq!(p("a_b*").to_like(), "a\\_b%");
        assert_eq!(p("\\").to_like(), "%\\\\%");
        assert_eq!(p("").to_like(), "%");
        assert!(p("a_b").matches("xa_by"));
        assert!(!p("a_b").matches("axb"));
        assert!(!p("%").matches("alice"));
    }

    #[test]
    fn the_socket_prototypes_like_rules() {
        let like = |raw: &str| Pattern::like(raw).expect("test patterns are valid");
        assert!(like("%").matches_all());
        assert!(like("").matches_all());
        assert!(like("a").matches("Charlie789"));
        assert!(!like("a").matches("bob456"));
        assert!(like("a%3").matches("alice123"));
        assert!(like("b_b").matches("xbob"));
        assert!(like("b_b").matches("b_b"));
        assert!(!like("b_b").matches("bb"));
        assert!(!like("*").matches("alice"));
        assert!(like("?").matches("who?"));
        assert_eq!(like("a_%").to_like(), "%a_%");
        assert_eq!(like("*").to_like(), "%*%");
        assert!(Pattern::like(&"x".repeat(PATTERN_CHARS_MAX + 1)).is_err());
    }

    #[test]
    fn the_prototypes_rules_match_literal_substrings() {
        let all = Pattern::substring("*").unwrap();
        assert!(all.matches_all());
        let literal = Pattern::substring("a*").unwrap();
        assert!(!literal.matches("alice"));
        assert!(literal.matches("xa*y"));
        assert_eq!(literal.to_like(), "%a*%");
        assert!(Pattern::substring("LI").unwrap().matches("alice"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Pattern::new(&"x".repeat(65)).is_err());
        assert_eq!(
            Pattern::new("a\nb").unwrap_err().to_string(),
            "pattern: must not contain control characters"
        );
    }
}
