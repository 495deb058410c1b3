//! `-E NAME=VALUE` sets a variable for the job; `-E NAME` copies NAME from the client's
//! environment.

use std::ffi::OsStr;

use cq_core::job::check_env_name;

/// Why an `-E` argument cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvArgError {
    /// The name part is not a valid variable name.
    #[error("-E {arg:?}: {source}")]
    BadName {
        /// The argument as given.
        arg: String,
        /// Why the name is invalid.
        #[source]
        source: cq_core::InvalidJob,
    },
    /// `-E NAME` names a variable the client's environment does not have.
    #[error(
        "-E {name}: {name} is not set in this environment (use -E {name}= to send an empty value)"
    )]
    NotSet {
        /// The variable.
        name: String,
    },
    /// `-E NAME` names a variable whose value is not UTF-8.
    #[error("-E {name}: the value of {name} is not valid UTF-8")]
    NotUtf8 {
        /// The variable.
        name: String,
    },
}

/// Resolves `-E` arguments in order, reading copies from `lookup` (the process environment
/// in the binary).
///
/// # Errors
///
/// The first argument that cannot be used.
pub fn resolve_env_args<F>(args: &[String], lookup: F) -> Result<Vec<(String, String)>, EnvArgError>
where
    F: Fn(&str) -> Option<std::ffi::OsString>,
{
    args.iter()
        .map(|arg| {
            let (name, value) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            check_env_name(name).map_err(|source| EnvArgError::BadName {
                arg: arg.clone(),
                source,
            })?;
            let value = match value {
                Some(value) => value,
                None => {
                    let copied = lookup(name).ok_or_else(|| EnvArgError::NotSet {
                        name: name.to_owned(),
                    })?;
                    os_to_string(&copied).ok_or_else(|| EnvArgError::NotUtf8 {
                        name: name.to_owned(),
                    })?
                }
            };
            Ok((name.to_owned(), value))
        })
        .collect()
}

fn os_to_string(value: &OsStr) -> Option<String> {
    value.to_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<std::ffi::OsString> {
        (name == "USE").then(|| "X -gtk".into())
    }

    #[test]
    fn set_copy_and_empty_values() {
        let args = [
            "FEATURES=buildpkg".to_owned(),
            "USE".to_owned(),
            "EMPTY=".to_owned(),
            "A=b=c".to_owned(),
        ];
        assert_eq!(
            resolve_env_args(&args, env).unwrap(),
            vec![
                ("FEATURES".into(), "buildpkg".into()),
                ("USE".into(), "X -gtk".into()),
                ("EMPTY".into(), String::new()),
                ("A".into(), "b=c".into()),
            ]
        );
    }

    #[test]
    fn bad_names_and_unset_copies_are_refused() {
        assert!(matches!(
            resolve_env_args(&["=x".into()], env),
            Err(EnvArgError::BadName { .. })
        ));
        assert!(matches!(
            resolve_env_args(&[String::new()], env),
            Err(EnvArgError::BadName { .. })
        ));
        assert_eq!(
            resolve_env_args(&["NOPE".into()], env),
            Err(EnvArgError::NotSet {
                name: "NOPE".into()
            })
        );
    }
}
