package contacts

import (
	"database/sql"
	"log/slog"

	"github.com/multiconnect/multiconnect/plugins/transport"
)

// Deps is what the contact checker needs from the process.
type Deps struct {
	DB      *sql.DB // the contacts cache
	Log     *slog.Logger
	Plugins *transport.Supervisor // the network's answers
	// DBError counts and logs a failed database operation.
	DBError func(op string, err error)
}
