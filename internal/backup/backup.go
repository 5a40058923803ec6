// Package backup is the encrypted document of POST /v1/settings/backup and
// /v1/settings/restore: the cluster's settings rows and users, sealed with
// a key derived from the operator's password.
//
// Format (version 1), base64 (standard, padded) of:
//
//	0x01 | salt (16 bytes) | nonce (24 bytes) | XChaCha20-Poly1305 ciphertext
//
// The key is argon2id(password, salt, time 3, memory 64 MiB, threads 4,
// 32 bytes): the second recommended option of RFC 9106. The version byte
// and the salt are the AEAD's additional data, so changing either fails
// authentication like any other damage. Both primitives are
// golang.org/x/crypto's; nothing here is hand-rolled. A later format gets a
// new version byte; Open refuses versions it does not know.
package backup

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// Version is the format written by Seal.
const Version = 1

// The KDF's parameters for Version 1.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	saltLen      = 16
)

// ErrOpen is every failure to open a backup: a wrong password, damaged or
// truncated data, an unknown version. They are not told apart, so the
// answer says nothing about the password.
var ErrOpen = errors.New("backup: wrong password or damaged data")

// Setting is one row of the settings table.
type Setting struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// User is one row of the users table; tokens are not backed up.
type User struct {
	Username           string `json:"username"`
	PasswordHash       string `json:"password_hash"`
	Role               string `json:"role"`
	MustChangePassword bool   `json:"must_change_password"`
}

// Payload is what a backup holds.
type Payload struct {
	Settings []Setting `json:"settings"`
	Users    []User    `json:"users"`
}

func key(password string, salt []byte) []byte {
	return argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, chacha20poly1305.KeySize)
}

// Seal encrypts p under password and returns the API's data string.
func Seal(p Payload, password string) (string, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("backup: encode: %w", err)
	}
	head := make([]byte, 1+saltLen, 1+saltLen+chacha20poly1305.NonceSizeX+len(plain)+chacha20poly1305.Overhead)
	head[0] = Version
	if _, err := rand.Read(head[1:]); err != nil {
		return "", fmt.Errorf("backup: salt: %w", err)
	}
	aead, err := chacha20poly1305.NewX(key(password, head[1:]))
	if err != nil {
		return "", fmt.Errorf("backup: cipher: %w", err)
	}
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("backup: nonce: %w", err)
	}
	ad := append([]byte(nil), head...)
	out := append(head, nonce...)
	out = aead.Seal(out, nonce, plain, ad)
	return base64.StdEncoding.EncodeToString(out), nil
}

// Open decrypts data with password. Any failure is ErrOpen.
func Open(data, password string) (Payload, error) {
	var p Payload
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return p, fmt.Errorf("%w (not base64)", ErrOpen)
	}
	const head = 1 + saltLen
	if len(raw) < head+chacha20poly1305.NonceSizeX+chacha20poly1305.Overhead || raw[0] != Version {
		return p, ErrOpen
	}
	aead, err := chacha20poly1305.NewX(key(password, raw[1:head]))
	if err != nil {
		return p, ErrOpen
	}
	nonce := raw[head : head+chacha20poly1305.NonceSizeX]
	plain, err := aead.Open(nil, nonce, raw[head+chacha20poly1305.NonceSizeX:], raw[:head])
	if err != nil {
		return p, ErrOpen
	}
	if err := json.Unmarshal(plain, &p); err != nil {
		return p, ErrOpen
	}
	return p, nil
}
