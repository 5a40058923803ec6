package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/multiconnect/multiconnect/internal/apierror"
	"github.com/multiconnect/multiconnect/internal/backup"
	"github.com/multiconnect/multiconnect/internal/certs"
	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Backup and restore (POST /v1/settings/backup, /v1/settings/restore): a
// backup holds every row of the settings table (application settings,
// account-level settings, media providers, the webhook CA, ...) and the
// users (names, password hashes, roles; never tokens), sealed by package
// backup with a key derived from the operator's password. Rows named
// certificates.external* hold the gateway's own certificate and private
// key: they stay out of backups (a key is not to travel in a file an
// operator mails around) and a restore leaves the target's as they are.

// excludedPrefix names the settings rows backups leave out.
const excludedPrefix = "certificates.external"

// maxRestore bounds a restore request: the settings table's documents
// (the profile photo is the largest, 2 MiB) in base64.
const maxRestore = 48 << 20

func backedUp(name string) bool { return !strings.HasPrefix(name, excludedPrefix) }

// snapshot reads the settings rows and users in one consistent read.
func (m *Master) snapshot(ctx context.Context) (backup.Payload, error) {
	p := backup.Payload{Settings: []backup.Setting{}, Users: []backup.User{}}
	tx, err := m.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
	if err != nil {
		return p, fmt.Errorf("backup: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT name, value FROM settings ORDER BY name`)
	if err != nil {
		return p, fmt.Errorf("backup: read settings: %w", err)
	}
	for rows.Next() {
		var s backup.Setting
		if err := rows.Scan(&s.Name, &s.Value); err != nil {
			rows.Close()
			return p, fmt.Errorf("backup: read settings: %w", err)
		}
		if backedUp(s.Name) {
			p.Settings = append(p.Settings, s)
		}
	}
	if err := rows.Close(); err != nil {
		return p, fmt.Errorf("backup: read settings: %w", err)
	}
	rows, err = tx.QueryContext(ctx, `SELECT username, password_hash, role, must_change_password FROM users ORDER BY username`)
	if err != nil {
		return p, fmt.Errorf("backup: read users: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var u backup.User
		if err := rows.Scan(&u.Username, &u.PasswordHash, &u.Role, &u.MustChangePassword); err != nil {
			return p, fmt.Errorf("backup: read users: %w", err)
		}
		p.Users = append(p.Users, u)
	}
	return p, rows.Err()
}

func (m *Master) backup(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeValid[struct{ Password string }](w, r, "BackupRequest")
	if !ok {
		return
	}
	// One at a time: the KDF takes 64 MiB.
	accountMu.Lock()
	defer accountMu.Unlock()
	p, err := m.snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	data, err := backup.Seal(p, req.Password)
	if err != nil {
		writeErr(w, err)
		return
	}
	m.log.Info("backup made", "settings", len(p.Settings), "users", len(p.Users))
	writeJSON(w, http.StatusOK, map[string]any{"settings": map[string]string{"data": data}})
}

// checkPayload refuses an opened backup that could not have been written
// by snapshot (it was authenticated, so this is a bug or a foreign tool).
func checkPayload(p backup.Payload) error {
	admin := false
	for _, u := range p.Users {
		if u.Username == "" || u.PasswordHash == "" || (u.Role != "ADMIN" && u.Role != "USER") {
			return fmt.Errorf("the backup's user %q is not valid", u.Username)
		}
		admin = admin || (u.Username == "admin" && u.Role == "ADMIN")
	}
	if !admin {
		// The gateway's built-in admin can be neither deleted nor demoted.
		return errors.New("the backup has no built-in admin user")
	}
	for _, s := range p.Settings {
		valid := json.Valid([]byte(s.Value))
		if s.Name == certs.WebhooksCARow {
			// The webhook CA is kept as PEM, not JSON.
			_, _, err := certs.ParseCABundle([]byte(s.Value))
			valid = err == nil
		}
		if s.Name == "" || !valid {
			return fmt.Errorf("the backup's setting %q is not valid", s.Name)
		}
	}
	return nil
}

func (m *Master) restore(w http.ResponseWriter, r *http.Request) {
	body, ok := validBody(w, r, "RestoreRequest", maxRestore)
	if !ok {
		return
	}
	var req struct{ Password, Data string }
	json.Unmarshal(body, &req) // validated above
	accountMu.Lock()
	defer accountMu.Unlock()
	p, err := backup.Open(req.Data, req.Password)
	if err == nil {
		err = checkPayload(p)
	}
	if err != nil {
		apierror.Write(w, apierror.ParameterInvalid, "data: "+err.Error())
		return
	}
	ctx := r.Context()
	rows := map[string]string{}
	for _, s := range p.Settings {
		if backedUp(s.Name) {
			rows[s.Name] = s.Value
		}
	}
	if err := m.pushAccount(ctx, rows); err != nil {
		networkRefused(w, fmt.Errorf("restore: %w", err))
		return
	}
	err = m.lease.fenced(ctx, func(tx *sql.Tx) error { return restoreRows(ctx, tx, rows, p.Users) })
	if err != nil {
		writeErr(w, err)
		return
	}
	m.log.Info("backup restored", "settings", len(rows), "users", len(p.Users))
	writeJSON(w, http.StatusOK, struct{}{})
}

// pushAccount tells the network the account-level settings of rows, and
// clears at the network what rows do not set. A photo gets the link this
// network gives it, written back into rows.
func (m *Master) pushAccount(ctx context.Context, rows map[string]string) error {
	call := func(op string, body any) ([]byte, error) {
		res, err := m.callNetwork(ctx, op, body)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		return res, nil
	}
	if v, ok := rows[rowAbout]; ok {
		var a transport.ProfileAbout
		if err := json.Unmarshal([]byte(v), &a); err != nil {
			return fmt.Errorf("%s: %w", rowAbout, err)
		}
		if _, err := call(transport.OpSetProfileAbout, a); err != nil {
			return err
		}
	}
	if v, ok := rows[rowPhoto]; ok {
		var sp storedPhoto
		if err := json.Unmarshal([]byte(v), &sp); err != nil {
			return fmt.Errorf("%s: %w", rowPhoto, err)
		}
		res, err := call(transport.OpSetProfilePhoto, transport.ProfilePhoto{ContentType: sp.ContentType, Data: sp.Data})
		if err != nil {
			return err
		}
		var pr transport.ProfilePhotoResult
		json.Unmarshal(res, &pr)
		sp.Link = pr.Link
		b, err := json.Marshal(sp)
		if err != nil {
			return err
		}
		rows[rowPhoto] = string(b)
	} else if _, err := call(transport.OpDeleteProfilePhoto, struct{}{}); err != nil {
		return err
	}
	var bp transport.BusinessProfile
	if v, ok := rows[rowBusiness]; ok {
		if err := json.Unmarshal([]byte(v), &bp); err != nil {
			return fmt.Errorf("%s: %w", rowBusiness, err)
		}
	}
	if _, err := call(transport.OpSetBusinessProfile, bp); err != nil {
		return err
	}
	if v, ok := rows[rowTwoStep]; ok {
		var ts transport.TwoStep
		if err := json.Unmarshal([]byte(v), &ts); err != nil {
			return fmt.Errorf("%s: %w", rowTwoStep, err)
		}
		if _, err := call(transport.OpSetTwoStep, ts); err != nil {
			return err
		}
	} else if _, err := call(transport.OpDeleteTwoStep, struct{}{}); err != nil {
		return err
	}
	return nil
}

// restoreRows replaces the settings rows (but the gateway's own
// certificate) and the users, revokes the tokens of users that are gone
// or whose password changed, and bumps the settings version so every node
// reloads.
func restoreRows(ctx context.Context, tx *sql.Tx, rows map[string]string, users []backup.User) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM settings WHERE name NOT LIKE ?`, excludedPrefix+"%"); err != nil {
		return fmt.Errorf("restore: clear settings: %w", err)
	}
	for name, value := range rows {
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, NOW(6))`, name, value); err != nil {
			return fmt.Errorf("restore: setting %s: %w", name, err)
		}
	}
	old := map[string]string{}
	q, err := tx.QueryContext(ctx, `SELECT username, password_hash FROM users FOR UPDATE`)
	if err != nil {
		return fmt.Errorf("restore: read users: %w", err)
	}
	for q.Next() {
		var name, hash string
		if err := q.Scan(&name, &hash); err != nil {
			q.Close()
			return fmt.Errorf("restore: read users: %w", err)
		}
		old[name] = hash
	}
	if err := q.Close(); err != nil {
		return fmt.Errorf("restore: read users: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM users`); err != nil {
		return fmt.Errorf("restore: clear users: %w", err)
	}
	for _, u := range users {
		if _, err := tx.ExecContext(ctx, `INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at)
			VALUES (?, ?, ?, ?, NOW(6), NOW(6))`, u.Username, u.PasswordHash, u.Role, u.MustChangePassword); err != nil {
			return fmt.Errorf("restore: user %s: %w", u.Username, err)
		}
		if h, ok := old[u.Username]; ok && h == u.PasswordHash {
			delete(old, u.Username) // same password: its tokens stay good
		}
	}
	for name := range old {
		if _, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE username = ?`, name); err != nil {
			return fmt.Errorf("restore: revoke %s's tokens: %w", name, err)
		}
	}
	return cluster.BumpSettings(ctx, tx)
}
