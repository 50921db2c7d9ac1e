//! How an error is shown to people: its message, then each cause that the message does not
//! already hold, joined by ": ". Many errors name their cause in their own message and also
//! return it as their `source()` (so that the chain stays inspectable); anyhow's `{:#}` would
//! print such a cause twice, or more often down a chain of wrappers.

/// `e` and its causes, each once: a cause whose text is already in what is written so far is
/// left out.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Wrapped(#[from] Read);

    #[test]
    fn each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = Read { path: "/a/b", source: io() };
        // anyhow's alternate form repeats it; `causes` does not.
        let any = anyhow::Error::new(Wrapped::from(Read { path: "/a/b", source: io() }));
        assert_eq!(
            format!("{any:#}"),
            "cannot read /a/b: No such file or directory (os error 2): cannot read /a/b: No such file or directory \
             (os error 2): No such file or directory (os error 2)"
        );
        assert_eq!(causes(any.as_ref()), "cannot read /a/b: No such file or directory (os error 2)");
        assert_eq!(causes(&e), "cannot read /a/b: No such file or directory (os error 2)");
        // A cause not in the message is added, and context on top comes first.
        let any = anyhow::Error::new(io()).context("reading the grid");
        assert_eq!(causes(any.as_ref()), "reading the grid: No such file or directory (os error 2)");
    }
}
