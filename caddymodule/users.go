package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/openapi"
)

// The original's built-in administrator and its first password, which must
// be changed at the first login.
const (
	defaultAdmin    = "admin"
	defaultPassword = "secret"
)

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,64}$`)

// seedAdmin creates admin/secret when the users table is empty. Gateways
// may race here at first start; INSERT IGNORE makes all but one a no-op.
func seedAdmin(ctx context.Context, db *sql.DB, cost int) error {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM users`).Scan(&n); err != nil {
		return fmt.Errorf("count users: %w", err)
	}
	if n > 0 {
		return nil
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(defaultPassword), cost)
	if err != nil {
		return fmt.Errorf("hash the default password: %w", err)
	}
	_, err = db.ExecContext(ctx, `INSERT IGNORE INTO users (username, password_hash, role, must_change_password, created_at, updated_at)
		SELECT ?, ?, ?, 1, NOW(6), NOW(6) FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM users)`, defaultAdmin, string(hash), roleAdmin)
	if err != nil {
		return fmt.Errorf("create the default admin user: %w", err)
	}
	return nil
}

// checkPassword applies the original's rules: 8 to 64 characters with at
// least one digit, one upper-case letter, one lower-case letter and one
// special character.
func checkPassword(p string) error {
	if n := utf8.RuneCountInString(p); n < 8 || n > 64 {
		return errors.New("the password must be 8 to 64 characters long")
	}
	if len(p) > 72 { // bcrypt reads at most 72 bytes
		return errors.New("the password must be at most 72 bytes long")
	}
	if !utf8.ValidString(p) {
		return errors.New("the password is not valid UTF-8")
	}
	var digit, upper, lower, special bool
	for _, r := range p {
		switch {
		case unicode.IsControl(r):
			return errors.New("the password must not contain control characters")
		case unicode.IsDigit(r):
			digit = true
		case unicode.IsUpper(r):
			upper = true
		case unicode.IsLower(r):
			lower = true
		case !unicode.IsLetter(r) && !unicode.IsSpace(r):
			special = true
		}
	}
	if !digit || !upper || !lower || !special {
		return errors.New("the password needs at least one digit, one upper-case letter, one lower-case letter and one special character")
	}
	return nil
}

// clientIP is the address Caddy resolved for the client (honouring its
// trusted_proxies setting).
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// decodeObject decodes an optional JSON object body into v once it passes
// components.schemas[schema] of the OpenAPI document (which refuses unknown
// fields, so a misspelt "new_pasword" is not silently ignored).
func decodeObject(r *http.Request, v any, required bool, schema string) *requestError {
	body, rerr := readBody(r, 64<<10)
	if rerr != nil {
		return rerr
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if required {
			return &requestError{0, apierror.RequestNotValid, "a JSON object body is required"}
		}
		return nil
	}
	if inv := openapi.Validate(schema, body); inv != nil {
		return &requestError{0, inv.Code, inv.Details}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &requestError{0, apierror.RequestNotValid, "the request body is not a valid JSON object for this route: " + err.Error()}
	}
	return nil
}

// db is the database for the users routes, once the gateway is ready: the
// schema current and the default admin created. Before that a login would
// find no admin and be counted as a failed attempt; it gets 503 instead.
func (g *Gateway) db() (*sql.DB, *requestError) {
	if why := g.view.notReady(); why != "" {
		return nil, &requestError{0, apierror.ServiceUnavailable, "gateway not ready: " + why}
	}
	if db := g.view.db.Load(); db != nil {
		return db, nil
	}
	return nil, &requestError{0, apierror.ServiceUnavailable, "gateway not ready"}
}

func dbUnavailable(err error) *requestError {
	return &requestError{0, apierror.ServiceUnavailable, "the database is unreachable: " + err.Error()}
}

// login is POST /v1/users/login: basic auth in, bearer token out.
func (g *Gateway) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use POST /v1/users/login")
		return
	}
	m := g.view.metrics.logins
	ip := clientIP(r)
	now := time.Now()
	if wait, ok := g.view.logins.begin(ip, g.LoginFailures, time.Duration(g.LoginWindow), now); !ok {
		m.WithLabelValues("limited").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		writeError(w, 0, apierror.TooManyRequests, fmt.Sprintf("more than %d failed logins from %s in %s; try again later", g.LoginFailures, ip, time.Duration(g.LoginWindow)))
		return
	}
	failed := false
	defer func() { g.view.logins.end(ip, failed, time.Now()) }()

	// Not ready comes first: a client (or a readiness probe) learns to wait
	// rather than that its credentials are wrong.
	db, rerr := g.db()
	if rerr != nil {
		rerr.write(w)
		return
	}
	username, password, ok := r.BasicAuth()
	if !ok {
		m.WithLabelValues("no_credentials").Inc()
		w.Header().Set("WWW-Authenticate", `Basic realm="multiconnect"`)
		unauthenticated("log in with HTTP basic auth: the username and password").write(w)
		return
	}
	var req struct {
		NewPassword string `json:"new_password"`
	}
	if rerr := decodeObject(r, &req, false, "LoginRequest"); rerr != nil {
		rerr.write(w)
		return
	}
	var hash, role string
	var mustChange bool
	err := db.QueryRowContext(r.Context(), `SELECT password_hash, role, must_change_password FROM users WHERE username = ?`, username).Scan(&hash, &role, &mustChange)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		dbUnavailable(err).write(w)
		return
	}
	if errors.Is(err, sql.ErrNoRows) {
		// An unknown user costs one bcrypt comparison like a known one,
		// so timing does not tell which usernames exist.
		bcrypt.CompareHashAndPassword(g.dummyHash(), []byte(password))
		hash = ""
	}
	if hash == "" || bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil {
		failed = true
		m.WithLabelValues("bad_credentials").Inc()
		g.log.Info("failed login", zap.String("username", username), zap.String("client_ip", ip))
		unauthenticated("invalid username or password").write(w)
		return
	}
	if mustChange && req.NewPassword == "" {
		m.WithLabelValues("change_required").Inc()
		writeError(w, 0, apierror.PasswordChangeRequired, `the password must be changed at the first login: log in again with {"new_password": "..."}`)
		return
	}
	if req.NewPassword != "" {
		if err := checkPassword(req.NewPassword); err != nil {
			writeError(w, 0, apierror.ParameterInvalid, "new_password: "+err.Error())
			return
		}
		if req.NewPassword == password {
			writeError(w, 0, apierror.ParameterInvalid, "new_password must differ from the current password")
			return
		}
		if rerr := g.setPassword(r.Context(), db, username, req.NewPassword, [32]byte{}); rerr != nil {
			rerr.write(w)
			return
		}
	}
	token, expires, rerr := g.issueToken(r.Context(), db, username)
	if rerr != nil {
		rerr.write(w)
		return
	}
	m.WithLabelValues("ok").Inc()
	b, _ := json.Marshal(map[string]any{"users": []map[string]string{{"token": token, "expires_after": expires}}})
	writeJSON(w, http.StatusOK, b)
}

// issueToken stores the hash of a new random token, valid token_ttl from
// now on the database's clock, and returns it with its expiry in the
// original's format ("2026-11-30 12:00:00+00:00").
func (g *Gateway) issueToken(ctx context.Context, db *sql.DB, username string) (string, string, *requestError) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", "", &requestError{0, apierror.GenericError, "cannot make a token: " + err.Error()}
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	h := hashToken(token)
	var expires time.Time
	if err := db.QueryRowContext(ctx, `SELECT NOW(6) + INTERVAL ? MICROSECOND`, time.Duration(g.TokenTTL).Microseconds()).Scan(&expires); err != nil {
		return "", "", dbUnavailable(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO tokens (token_hash, username, expires_at, revoked, created_at) VALUES (?, ?, ?, 0, NOW(6))`,
		hex.EncodeToString(h[:]), username, expires); err != nil {
		return "", "", dbUnavailable(err)
	}
	return token, expires.UTC().Format("2006-01-02 15:04:05-07:00"), nil
}

// setPassword stores a new password and revokes every token of the user
// but keep (the caller's own token when users change their own password),
// so a leaked token dies with the password it was issued under.
func (g *Gateway) setPassword(ctx context.Context, db *sql.DB, username, password string, keep [32]byte) *requestError {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), g.BcryptCost)
	if err != nil {
		return &requestError{0, apierror.ParameterInvalid, "password: " + err.Error()}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbUnavailable(err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE users SET password_hash = ?, must_change_password = 0, updated_at = NOW(6) WHERE username = ?`, string(hash), username)
	if err != nil {
		return dbUnavailable(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return &requestError{0, apierror.NotFound, "no user " + strconv.Quote(username)}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE username = ? AND token_hash <> ?`, username, hex.EncodeToString(keep[:])); err != nil {
		return dbUnavailable(err)
	}
	if err := tx.Commit(); err != nil {
		return dbUnavailable(err)
	}
	g.view.tokens.dropUser(username, keep)
	return nil
}

// logout is POST /v1/users/logout: it revokes the caller's token.
func (g *Gateway) logout(w http.ResponseWriter, r *http.Request, p principal) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use POST /v1/users/logout")
		return
	}
	db, rerr := g.db()
	if rerr != nil {
		rerr.write(w)
		return
	}
	if _, err := db.ExecContext(r.Context(), `UPDATE tokens SET revoked = 1 WHERE token_hash = ?`, hex.EncodeToString(p.tokenHash[:])); err != nil {
		dbUnavailable(err).write(w)
		return
	}
	g.view.tokens.drop(p.tokenHash)
	writeJSON(w, http.StatusOK, []byte("{}\n"))
}

type userDoc struct {
	Username string `json:"username"`
	Role     string `json:"role,omitempty"`
	// Roles is the original's name and form of the role (ROLE_ADMIN,
	// ROLE_USER), answered beside ours so clients of either read it.
	Roles string `json:"ROLES,omitempty"`
}

func usersJSON(us ...userDoc) []byte {
	for i := range us {
		if us[i].Role != "" {
			us[i].Roles = "ROLE_" + us[i].Role
		}
	}
	b, _ := json.Marshal(map[string][]userDoc{"users": us})
	return b
}

// users serves /v1/users and /v1/users/{username}. Routing already
// required a token (and ADMIN for the collection and for DELETE); a USER
// may read or change only itself.
func (g *Gateway) users(w http.ResponseWriter, r *http.Request, p principal) {
	db, rerr := g.db()
	if rerr != nil {
		rerr.write(w)
		return
	}
	name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/v1/users"), "/")
	if name == "" {
		switch r.Method {
		case http.MethodPost:
			g.createUser(w, r, db)
		case http.MethodGet:
			g.listUsers(w, r, db)
		default:
			writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use POST or GET on /v1/users")
		}
		return
	}
	if strings.Contains(name, "/") || !usernameRE.MatchString(name) {
		writeError(w, 0, apierror.NotFound, "no user "+strconv.Quote(name))
		return
	}
	if p.role != roleAdmin && name != p.username {
		g.view.metrics.authFail.WithLabelValues("role").Inc()
		writeError(w, 0, apierror.AccessDenied, "a USER may only read or change itself")
		return
	}
	switch r.Method {
	case http.MethodGet:
		var role string
		err := db.QueryRowContext(r.Context(), `SELECT role FROM users WHERE username = ?`, name).Scan(&role)
		if errors.Is(err, sql.ErrNoRows) {
			writeError(w, 0, apierror.NotFound, "no user "+strconv.Quote(name))
			return
		}
		if err != nil {
			dbUnavailable(err).write(w)
			return
		}
		writeJSON(w, http.StatusOK, usersJSON(userDoc{Username: name, Role: role}))
	case http.MethodPut:
		g.updateUser(w, r, db, p, name)
	case http.MethodDelete:
		g.deleteUser(w, r, db, p, name)
	default:
		writeError(w, http.StatusMethodNotAllowed, apierror.RequestNotValid, "use GET, PUT or DELETE on /v1/users/{username}")
	}
}

func (g *Gateway) createUser(w http.ResponseWriter, r *http.Request, db *sql.DB) {
	var req struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Role     string `json:"role"`
	}
	// The schema says what is required, the username's characters, the
	// password's length and the roles; the password's character classes
	// are checked below.
	if rerr := decodeObject(r, &req, true, "UserCreate"); rerr != nil {
		rerr.write(w)
		return
	}
	role, err := parseRole(req.Role)
	if err != nil {
		writeError(w, 0, apierror.ParameterInvalid, err.Error())
		return
	}
	if err := checkPassword(req.Password); err != nil {
		writeError(w, 0, apierror.ParameterInvalid, "password: "+err.Error())
		return
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(req.Password), g.BcryptCost)
	if err != nil {
		writeError(w, 0, apierror.ParameterInvalid, "password: "+err.Error())
		return
	}
	_, err = db.ExecContext(r.Context(), `INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at)
		VALUES (?, ?, ?, 0, NOW(6), NOW(6))`, req.Username, string(hash), role)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1062 { // duplicate key
		writeError(w, 0, apierror.ParameterInvalid, "user "+strconv.Quote(req.Username)+" already exists")
		return
	}
	if err != nil {
		dbUnavailable(err).write(w)
		return
	}
	writeJSON(w, http.StatusCreated, usersJSON(userDoc{Username: req.Username, Role: role}))
}

func parseRole(s string) (string, error) {
	switch strings.TrimPrefix(strings.ToUpper(s), "ROLE_") {
	case "", roleUser:
		return roleUser, nil
	case roleAdmin:
		return roleAdmin, nil
	}
	return "", fmt.Errorf("role must be ADMIN or USER, not %q", s)
}

func (g *Gateway) listUsers(w http.ResponseWriter, r *http.Request, db *sql.DB) {
	rows, err := db.QueryContext(r.Context(), `SELECT username, role FROM users ORDER BY username`)
	if err != nil {
		dbUnavailable(err).write(w)
		return
	}
	defer rows.Close()
	us := []userDoc{}
	for rows.Next() {
		var u userDoc
		if err := rows.Scan(&u.Username, &u.Role); err != nil {
			dbUnavailable(err).write(w)
			return
		}
		us = append(us, u)
	}
	if err := rows.Err(); err != nil {
		dbUnavailable(err).write(w)
		return
	}
	writeJSON(w, http.StatusOK, usersJSON(us...))
}

// updateUser is PUT /v1/users/{username}: a new password (anyone for
// itself, an ADMIN for anyone) and, for an ADMIN, a new role.
func (g *Gateway) updateUser(w http.ResponseWriter, r *http.Request, db *sql.DB, p principal, name string) {
	var req struct {
		Password string `json:"password"`
		Role     string `json:"role"`
	}
	if rerr := decodeObject(r, &req, true, "UserUpdate"); rerr != nil {
		rerr.write(w)
		return
	}
	if req.Role != "" {
		role, err := parseRole(req.Role)
		if err != nil {
			writeError(w, 0, apierror.ParameterInvalid, err.Error())
			return
		}
		if p.role != roleAdmin {
			writeError(w, 0, apierror.AccessDenied, "only an ADMIN may change roles")
			return
		}
		if name == defaultAdmin && role != roleAdmin {
			writeError(w, 0, apierror.ParameterInvalid, "the built-in admin user stays ADMIN")
			return
		}
		res, err := db.ExecContext(r.Context(), `UPDATE users SET role = ?, updated_at = NOW(6) WHERE username = ?`, role, name)
		if err != nil {
			dbUnavailable(err).write(w)
			return
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var exists int
			if db.QueryRowContext(r.Context(), `SELECT 1 FROM users WHERE username = ?`, name).Scan(&exists) != nil {
				writeError(w, 0, apierror.NotFound, "no user "+strconv.Quote(name))
				return
			}
		}
		g.view.tokens.dropUser(name, [32]byte{})
	}
	if req.Password != "" {
		if err := checkPassword(req.Password); err != nil {
			writeError(w, 0, apierror.ParameterInvalid, "password: "+err.Error())
			return
		}
		var keep [32]byte
		if name == p.username {
			keep = p.tokenHash
		}
		if rerr := g.setPassword(r.Context(), db, name, req.Password, keep); rerr != nil {
			rerr.write(w)
			return
		}
	}
	writeJSON(w, http.StatusOK, usersJSON(userDoc{Username: name}))
}

// deleteUser is DELETE /v1/users/{username} (ADMIN): the user goes and its
// tokens stop working.
func (g *Gateway) deleteUser(w http.ResponseWriter, r *http.Request, db *sql.DB, p principal, name string) {
	if name == defaultAdmin {
		writeError(w, 0, apierror.ParameterInvalid, "the built-in admin user cannot be deleted")
		return
	}
	if name == p.username {
		writeError(w, 0, apierror.ParameterInvalid, "users cannot delete themselves")
		return
	}
	tx, err := db.BeginTx(r.Context(), nil)
	if err != nil {
		dbUnavailable(err).write(w)
		return
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(r.Context(), `DELETE FROM users WHERE username = ?`, name)
	if err != nil {
		dbUnavailable(err).write(w)
		return
	}
	if n, _ := res.RowsAffected(); n == 0 {
		writeError(w, 0, apierror.NotFound, "no user "+strconv.Quote(name))
		return
	}
	if _, err := tx.ExecContext(r.Context(), `UPDATE tokens SET revoked = 1 WHERE username = ?`, name); err != nil {
		dbUnavailable(err).write(w)
		return
	}
	if err := tx.Commit(); err != nil {
		dbUnavailable(err).write(w)
		return
	}
	g.view.tokens.dropUser(name, [32]byte{})
	writeJSON(w, http.StatusOK, usersJSON(userDoc{Username: name}))
}
