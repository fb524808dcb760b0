from bootagent.cli import main

raise SystemExit(main())
