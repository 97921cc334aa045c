//! Sessions: the anchor that keeps us logged in, the pool, and self-recovery.
//!
//! Locking: `state` is a `RwLock`. Every operation holds it shared from taking a session
//! out of the pool until giving it back; reconnecting, `ensure_keys` and
//! `close_all_sessions` hold it exclusively. So while sessions are replaced no operation
//! has one in hand, and a session taken before a reconnect is never used after it.
//!
//! Sessions are opened "no-drop": cryptoki does not close them when dropped. After the
//! token has dropped our sessions (removal, another part of the process closing them)
//! their handles may already belong to somebody's new session; closing them blindly could
//! close that one. So lost sessions are forgotten, and only sessions we know to be ours
//! are closed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tracing::{debug, warn};

use crate::config::{HsmConfig, KeyLabels, WrapMechanism};
use crate::error::{Error, Recovery, pkcs11};
use crate::keys::{self, Handles, Key};
use crate::module::Module;

pub(crate) struct Inner {
    module: Arc<Module>,
    slot: Slot,
    pub(crate) token_label: String,
    pin: SecretString,
    pub(crate) labels: KeyLabels,
    pub(crate) rsa_bits: u32,
    pub(crate) wrap: WrapMechanism,
    pool_size: usize,
    state: RwLock<State>,
    idle: Mutex<Vec<Session>>,
}

struct State {
    /// Open for the life of the `Hsm`: closing the last session logs the application out.
    /// The `Mutex` only makes `State` `Sync`; the anchor is used under the write lock.
    anchor: Mutex<Option<Session>>,
    /// The anchor exists and is logged in (false after `close_all_sessions` or a failed login).
    connected: bool,
    /// Set once the token rejects the PIN, so we never hammer a PIN retry counter.
    login_blocked: Option<RvError>,
    /// Bumped by every reconnect; lets racing threads recover only once.
    generation: u64,
    handles: Handles,
}

impl State {
    fn anchor(&mut self) -> &mut Option<Session> {
        self.anchor
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Session pool figures, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Most idle sessions kept.
    pub size: usize,
    /// Idle sessions now.
    pub idle: usize,
    /// Logged in to the token (false after a lost connection, until the next reconnect).
    pub connected: bool,
    /// Reconnects since start.
    pub reconnects: u64,
}

impl Inner {
    pub(crate) fn stats(&self) -> PoolStats {
        let (connected, generation) = {
            let s = self.read();
            (s.connected, s.generation)
        };
        PoolStats {
            size: self.pool_size,
            idle: self.idle().len(),
            connected,
            // The first connect is generation 1.
            reconnects: generation.saturating_sub(1),
        }
    }

    /// Open the anchor session and log in.
    pub(crate) fn connect(
        module: Arc<Module>,
        slot: Slot,
        config: &HsmConfig,
    ) -> Result<Self, Error> {
        let inner = Self {
            module,
            slot,
            token_label: config.token_label.clone(),
            pin: config.pin.clone(),
            labels: config.labels.clone(),
            rsa_bits: config.rsa_bits,
            wrap: config.wrap_mechanism,
            pool_size: config.pool_size,
            state: RwLock::new(State {
                anchor: Mutex::new(None),
                connected: false,
                login_blocked: None,
                generation: 0,
                handles: Handles::default(),
            }),
            idle: Mutex::new(Vec::new()),
        };
        inner.reconnect(&mut inner.write(), Recovery::Sessions)?;
        Ok(inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Session>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run `op` on a pooled session with the handles of `needs` resolved. If it fails in
    /// a way a reconnect can cure (see [`Error::recovery`]), reconnect and retry once.
    pub(crate) fn run<T>(
        &self,
        needs: &[Key],
        op: impl Fn(&Session, &Handles) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (result, generation) = self.attempt(needs, &op);
        let err = match result {
            Err(err) => err,
            ok => return ok,
        };
        let Some(kind) = err.recovery() else {
            return Err(err);
        };
        warn!(token = %self.token_label, error = %err, ?kind, "HSM operation failed; recovering and retrying once");
        self.recover(generation, kind)?;
        self.attempt(needs, &op).0
    }

    fn attempt<T>(
        &self,
        needs: &[Key],
        op: &impl Fn(&Session, &Handles) -> Result<T, Error>,
    ) -> (Result<T, Error>, u64) {
        {
            let state = self.read();
            if state.connected && needs.iter().all(|k| state.handles.get(*k).is_some()) {
                return (self.exec(&state.handles, op), state.generation);
            }
        }
        // First use of a key, or after close_all_sessions: resolve under the write lock and
        // run there too (rare, and it saves a second round of lock juggling).
        let mut state = self.write();
        let result = self
            .prepare(&mut state, needs, false)
            .and_then(|()| self.exec(&state.handles, op));
        (result, state.generation)
    }

    /// Make sure we are logged in and the handles of `needs` are known. Looking keys up
    /// while logged out would miss every private key, so before a lookup (and before
    /// creating keys, `check_login`) confirm the login with one `C_GetSessionInfo`.
    fn prepare(&self, state: &mut State, needs: &[Key], check_login: bool) -> Result<(), Error> {
        let lookup = needs.iter().any(|k| state.handles.get(*k).is_none());
        if !state.connected {
            // After close_all_sessions (no anchor) or a failed login (anchor kept).
            warn!(token = %self.token_label, "not logged in to the HSM; reconnecting");
            self.reconnect(state, Recovery::Login)?;
        } else if (lookup || check_login) && !self.logged_in(state) {
            warn!(token = %self.token_label, "HSM login lost; logging in again");
            self.reconnect(state, Recovery::Login)?;
        }
        for &key in needs {
            if state.handles.get(key).is_some() {
                continue;
            }
            let handle = match state.anchor() {
                Some(anchor) => keys::find(anchor, key, &self.labels)?,
                None => None,
            };
            let handle = handle.ok_or_else(|| Error::KeyNotFound {
                label: key.label(&self.labels).to_owned(),
                kind: key.kind(),
            })?;
            state.handles.set(key, handle);
        }
        Ok(())
    }

    fn exec<T>(
        &self,
        handles: &Handles,
        op: &impl Fn(&Session, &Handles) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let session = self.checkout()?;
        let result = op(&session, handles);
        self.checkin(session, result.as_ref().err());
        result
    }

    /// Run `op` on the anchor session under the exclusive lock (key creation), with the
    /// same reconnect-and-retry-once rule as [`Inner::run`].
    pub(crate) fn run_exclusive<T>(
        &self,
        op: impl Fn(&Session, &mut Handles) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut state = self.write();
        let err = match self.exclusive_attempt(&mut state, &op) {
            Err(err) => err,
            ok => return ok,
        };
        let Some(kind) = err.recovery() else {
            return Err(err);
        };
        warn!(token = %self.token_label, error = %err, ?kind, "HSM operation failed; recovering and retrying once");
        self.reconnect(&mut state, kind)?;
        self.exclusive_attempt(&mut state, &op)
    }

    fn exclusive_attempt<T>(
        &self,
        state: &mut State,
        op: &impl Fn(&Session, &mut Handles) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.prepare(state, &[], true)?;
        let State {
            anchor, handles, ..
        } = state;
        match anchor.get_mut().unwrap_or_else(PoisonError::into_inner) {
            Some(anchor) => op(anchor, handles),
            // INVARIANT: prepare() leaves an anchor or returns an error; report, not panic.
            None => Err(Error::UnexpectedResponse {
                what: "missing anchor session",
            }),
        }
    }

    fn recover(&self, seen_generation: u64, kind: Recovery) -> Result<(), Error> {
        let mut state = self.write();
        if state.generation != seen_generation {
            // Another thread reconnected while we waited for the lock.
            return Ok(());
        }
        self.reconnect(&mut state, kind)
    }

    /// Make the anchor usable again and forget all handles so they are found by label.
    fn reconnect(&self, state: &mut State, kind: Recovery) -> Result<(), Error> {
        if let Some(rv) = state.login_blocked {
            return Err(Error::LoginBlocked { rv });
        }
        let alive =
            kind != Recovery::Sessions && state.anchor().as_ref().is_some_and(|s| self.owns(s));
        state.connected = false;
        state.handles = Handles::default();
        state.generation = state.generation.wrapping_add(1);
        if !alive {
            // Forget, do not close: see the module comment.
            self.idle().clear();
            *state.anchor() = None;
            let anchor = self
                .module
                .ctx
                .open_rw_session_no_drop(self.slot)
                .map_err(pkcs11("C_OpenSession"))?;
            *state.anchor() = Some(anchor);
        }
        self.login(state)?;
        state.connected = true;
        Ok(())
    }

    fn login(&self, state: &mut State) -> Result<(), Error> {
        let Some(anchor) = state.anchor().as_ref() else {
            return Ok(());
        };
        match anchor.login(UserType::User, Some(&self.pin)) {
            // Login is per application and token, not per session.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(err) => {
                if let CkError::Pkcs11(
                    rv @ (RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinExpired
                    | RvError::PinLocked),
                    _,
                ) = err
                {
                    state.login_blocked = Some(rv);
                }
                Err(pkcs11("C_Login")(err))
            }
        }
    }

    /// Whether the anchor is alive and the user is logged in.
    fn logged_in(&self, state: &mut State) -> bool {
        state.anchor().as_ref().is_some_and(|anchor| {
            anchor.get_session_info().is_ok_and(|info| {
                info.slot_id() == self.slot
                    && matches!(
                        info.session_state(),
                        SessionState::RwUser | SessionState::RoUser
                    )
            })
        })
    }

    /// Whether `session` is still a live session on our slot.
    fn owns(&self, session: &Session) -> bool {
        session
            .get_session_info()
            .is_ok_and(|info| info.slot_id() == self.slot)
    }

    fn checkout(&self) -> Result<Session, Error> {
        if let Some(session) = self.idle().pop() {
            return Ok(session);
        }
        // Login is per application: a new session on a logged-in token is logged in.
        self.module
            .ctx
            .open_rw_session_no_drop(self.slot)
            .map_err(pkcs11("C_OpenSession"))
    }

    fn checkin(&self, session: Session, failure: Option<&Error>) {
        match failure.map(Error::recovery) {
            // The session is gone; its handle may be someone else's by now.
            Some(Some(Recovery::Sessions)) => {}
            // A failed call may leave an operation active: start the next one clean.
            Some(_) => close_quietly(session),
            None => {
                let mut idle = self.idle();
                if idle.len() < self.pool_size {
                    idle.push(session);
                } else {
                    drop(idle);
                    close_quietly(session);
                }
            }
        }
    }

    /// Close the pooled sessions and the anchor. The application is then logged out
    /// (`SoftHSM2` logs out when the last session closes); the next operation reconnects.
    pub(crate) fn close_all(&self) -> Result<(), Error> {
        let mut state = self.write();
        let mut sessions = std::mem::take(&mut *self.idle());
        sessions.extend(state.anchor().take());
        state.connected = false;
        state.handles = Handles::default();
        state.generation = state.generation.wrapping_add(1);
        let mut first_error = None;
        // A session that is no longer ours (lost unnoticed) is forgotten, not closed.
        for session in sessions.into_iter().filter(|s| self.owns(s)) {
            match session.close() {
                Ok(())
                | Err(CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _)) =>
                    {}
                Err(err) => {
                    first_error.get_or_insert(pkcs11("C_CloseSession")(err));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
        let anchor = self
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .anchor()
            .take();
        // Anchor last: it keeps the login while the others close.
        for session in idle.into_iter().chain(anchor) {
            if self.owns(&session) {
                close_quietly(session);
            }
        }
    }
}

fn close_quietly(session: Session) {
    if let Err(err) = session.close() {
        debug!(error = %pkcs11("C_CloseSession")(err), "closing an HSM session failed");
    }
}
