import click
@click.group()
def cli():
    """scalerl"""
def main():
    cli()
