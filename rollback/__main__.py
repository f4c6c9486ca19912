from rollback.cli import main

raise SystemExit(main())
