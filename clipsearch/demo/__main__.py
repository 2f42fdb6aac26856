from clipsearch.demo.cli import main

main()
