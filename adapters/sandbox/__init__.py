"""Local emulators of the CRM APIs refsync uses: for the demo, the tests and outside checks."""
