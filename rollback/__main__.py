from rollback.entry import main

main()
