//! The local terminal while `-t` runs a remote one: raw mode for as long as
//! the call lasts, and its size sent along whenever it changes.
//!
//! On Unix, raw mode is crossterm's and a resize is SIGWINCH. A Windows
//! console needs two modes more than crossterm's raw mode sets: virtual
//! terminal input, so arrow and function keys arrive as the escape sequences
//! the remote pty expects (without it they produce no bytes at all), and
//! virtual terminal processing, so what the remote side draws is drawn, not
//! printed. Windows has no SIGWINCH, and crossterm's resize events come
//! from the console input queue that stdin is read from, so the size is
//! polled instead (as docker's CLI does on Windows).

use rexec::client::SessionInput;
use rexec::ending::Ending;

/// The local terminal in raw mode; restored on drop and on panic.
pub struct RawMode {
    #[cfg(windows)]
    console: windows::SavedModes,
}

impl RawMode {
    pub fn enable() -> Result<Self, Ending> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            previous(info);
        }));
        #[cfg(windows)]
        let console = windows::SavedModes::take();
        crossterm::terminal::enable_raw_mode()
            .map_err(|e| Ending::failed(format!("cannot put the terminal in raw mode: {e}")))?;
        #[cfg(windows)]
        console.add_virtual_terminal();
        Ok(RawMode {
            #[cfg(windows)]
            console,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
        #[cfg(windows)]
        self.console.restore();
    }
}

/// Sends the terminal's size each time it changes, until the session ends.
#[cfg(unix)]
pub async fn forward_resizes(input: SessionInput) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Ok((cols, rows)) = crossterm::terminal::size()
            && input.resize(rows, cols).await.is_err()
        {
            return;
        }
    }
}

/// How often a Windows console's size is looked at.
#[cfg(windows)]
const RESIZE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends the terminal's size each time it changes, until the session ends.
#[cfg(windows)]
pub async fn forward_resizes(input: SessionInput) {
    let mut sizes = SizeChanges::new(crossterm::terminal::size().ok());
    let mut tick = tokio::time::interval(RESIZE_POLL);
    loop {
        tick.tick().await;
        if let Some((cols, rows)) = sizes.next(crossterm::terminal::size().ok())
            && input.resize(rows, cols).await.is_err()
        {
            return;
        }
    }
}

/// Polled sizes to resizes: a size that differs from the last one sent (or
/// the one the remote terminal started with). A failed read is no change.
#[cfg_attr(unix, allow(dead_code))]
struct SizeChanges {
    last: Option<(u16, u16)>,
}

#[cfg_attr(unix, allow(dead_code))]
impl SizeChanges {
    fn new(start: Option<(u16, u16)>) -> Self {
        SizeChanges { last: start }
    }

    fn next(&mut self, now: Option<(u16, u16)>) -> Option<(u16, u16)> {
        let now = now.filter(|&(cols, rows)| cols > 0 && rows > 0)?;
        if self.last == Some(now) {
            return None;
        }
        self.last = Some(now);
        Some(now)
    }
}

#[cfg(windows)]
mod windows {
    use windows_sys::Win32::System::Console::{
        CONSOLE_MODE, ENABLE_VIRTUAL_TERMINAL_INPUT, ENABLE_VIRTUAL_TERMINAL_PROCESSING,
        GetConsoleMode, GetStdHandle, STD_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
        SetConsoleMode,
    };

    /// The console modes of stdin and stdout as they were before raw mode
    /// (`None` for a handle that is not a console).
    pub struct SavedModes {
        input: Option<CONSOLE_MODE>,
        output: Option<CONSOLE_MODE>,
    }

    impl SavedModes {
        pub fn take() -> Self {
            SavedModes {
                input: mode(STD_INPUT_HANDLE),
                output: mode(STD_OUTPUT_HANDLE),
            }
        }

        /// Turns on VT input and output over whatever raw mode set. A console
        /// too old for them keeps working without (keys as before, escape
        /// sequences shown as text).
        pub fn add_virtual_terminal(&self) {
            if self.input.is_some()
                && let Some(now) = mode(STD_INPUT_HANDLE)
            {
                set_mode(STD_INPUT_HANDLE, now | ENABLE_VIRTUAL_TERMINAL_INPUT);
            }
            if let Some(before) = self.output {
                set_mode(
                    STD_OUTPUT_HANDLE,
                    before | ENABLE_VIRTUAL_TERMINAL_PROCESSING,
                );
            }
        }

        pub fn restore(&self) {
            if let Some(before) = self.input {
                set_mode(STD_INPUT_HANDLE, before);
            }
            if let Some(before) = self.output {
                set_mode(STD_OUTPUT_HANDLE, before);
            }
        }
    }

    fn mode(which: STD_HANDLE) -> Option<CONSOLE_MODE> {
        let mut mode: CONSOLE_MODE = 0;
        // SAFETY: GetStdHandle takes no pointers; GetConsoleMode writes one
        // CONSOLE_MODE through a pointer to a local that outlives the call,
        // and fails (returns 0) on a handle that is not a console.
        let ok = unsafe { GetConsoleMode(GetStdHandle(which), &mut mode) };
        (ok != 0).then_some(mode)
    }

    fn set_mode(which: STD_HANDLE, mode: CONSOLE_MODE) {
        // SAFETY: no pointers; a failure (not a console, a mode the console
        // does not know) leaves the mode as it was, which is what we want.
        unsafe {
            SetConsoleMode(GetStdHandle(which), mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_size_is_a_resize() {
        let mut sizes = SizeChanges::new(Some((80, 24)));
        assert_eq!(sizes.next(Some((80, 24))), None);
        assert_eq!(sizes.next(Some((120, 40))), Some((120, 40)));
        assert_eq!(sizes.next(Some((120, 40))), None);
        // A failed read or a zero size (a minimised window) is no change...
        assert_eq!(sizes.next(None), None);
        assert_eq!(sizes.next(Some((0, 0))), None);
        // ...and the size before it still counts as sent.
        assert_eq!(sizes.next(Some((120, 40))), None);
        assert_eq!(sizes.next(Some((80, 24))), Some((80, 24)));
    }

    #[test]
    fn the_first_size_is_sent_when_the_start_was_unknown() {
        let mut sizes = SizeChanges::new(None);
        assert_eq!(sizes.next(Some((100, 30))), Some((100, 30)));
    }
}
