package transport

// Operations for Transport.Call. Each names what its body and result are;
// bodies and results are JSON unless an op says otherwise. A network that
// lacks an op answers ErrUnsupported, and the API answers that as the
// original answered an operation its deployment did not offer.
//
// Ops are added here, one constant (and its body and result types, in a
// file of the area that uses them) per operation, so that a plugin's
// switch over them is the complete list of what it offers.
