package caddymodule

import (
	"fmt"
	"os"
	"testing"
)

// TestMain gives this package's processes a private TMPDIR. mariadbd (and
// the mariadb-install-db bootstrap) keep temporary tables in $TMPDIR, and
// with a shared /tmp a bootstrap running beside other packages' MariaDBs
// was seen failing with "Error on delete of '/tmp/#sql-temptable-...'".
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mc-caddymodule-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
