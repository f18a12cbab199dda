from steno_exportd.cli import main

raise SystemExit(main())
