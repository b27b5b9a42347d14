"""The ground floor: settings every package shares (the stack's addresses, the models of the four
roles), the way command-line options are declared, and the one logging setup. Imports no other
package of the project."""
