package schema

import (
	"errors"

	"github.com/go-sql-driver/mysql"
)

// errDupKeyName is MySQL's ER_DUP_KEYNAME: the index already exists.
const errDupKeyName = 1061

// errDupColumn is MySQL's ER_DUP_FIELDNAME: the column already exists.
const errDupColumn = 1060

// errCantDropKey is MySQL's ER_CANT_DROP_FIELD_OR_KEY: the index (or
// column) to drop is not there, so a DROP already ran.
const errCantDropKey = 1091

func errorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
