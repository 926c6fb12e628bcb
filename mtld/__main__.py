from mtld.cli import main

main()
