//! Library errors as messages for the command line: what went wrong, the file, and the flag to
//! change.

use cmrm::Error;

/// The flag or step that fixes `e`.
fn hint(e: &Error) -> Option<&'static str> {
    Some(match e {
        Error::ContextFull { .. } => "shorten the prompt or raise the context size with -c N",
        Error::ModelFile { .. } => "check the path given to -m/--model",
        Error::ProjectorFile { .. } => "check the path given to --mmproj",
        Error::ProjectorMismatch { .. } => "use the mmproj made for this model (--mmproj)",
        Error::NoProjector => "pass the model's projector with --mmproj FILE",
        Error::VectorFile { .. } => {
            "check the path given to --cmrm, or make vectors with `cmrm calibrate`"
        }
        Error::ForeignVectors {
            overridable: true, ..
        } => "calibrate vectors for this model with `cmrm calibrate`, or pass --force to use them anyway (their shifts may mean nothing for this model)",
        Error::ForeignVectors { .. } => "calibrate vectors for this model with `cmrm calibrate`",
        Error::Image { .. } => "check the image (PNG, JPEG, BMP, GIF or WebP)",
        Error::Steering(_) => "check the --cmrm-* flags (cmrm help chat lists them)",
        Error::Template(_) => "choose a template with --chat-template NAME",
        Error::Data { .. } => "fix the file at that line",
        Error::Io { .. } => "check that the path exists and that you may read or write it",
        _ => return None,
    })
}

/// Prints `e` on stderr as `error: ...`, with the fix when the error is a library error.
pub fn report(e: &anyhow::Error) {
    let mut msg = format!("{e:#}");
    if let Some(h) = e
        .chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .and_then(hint)
    {
        msg.push_str(": ");
        msg.push_str(h);
    }
    eprintln!("error: {msg}");
}
