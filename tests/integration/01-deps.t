#!/usr/bin/perl
# 01-deps.t: every program Loom's code runs comes from a package that
# tools/install-deps installs, so that `make up` and the tests work on a fresh
# Debian 12 machine, not only where someone installed a package by hand.
#
# The programs come from the sources (tools/list-programs), their packages
# from tools/programs.list, the packages installed from the PKGS array of
# tools/install-deps. For each program:
#   - it has a line in programs.list, unless dpkg says its file belongs to an
#     Essential package;
#   - the listed package is in PKGS (or Essential);
#   - its file is here, in /usr/sbin, /usr/bin, /sbin or /bin for a name (not
#     /usr/local, not your PATH: no package installs a pyenv shim), and dpkg -S
#     says it belongs to that package or to one the package depends on
#     (symlinks and alternatives followed);
#   - a path the code names (/sbin/nft) exists as such.
# And: programs.list names nothing the sources no longer run, and every
# package in PKGS is installed (make test runs install-deps first).
# It needs no platform and takes about a second.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname basename);
use Test::More;

my $repo = abs_path(dirname(abs_path($0)) . '/../..');
my $list_file = "$repo/tools/programs.list";
my @bin_dirs = qw(/usr/sbin /usr/bin /sbin /bin);
$ENV{LC_ALL} = 'C';

sub slurp {
	my ($f) = @_;
	open my $fh, '<', $f or BAIL_OUT("cannot read $f: $!");
	local $/;
	return scalar <$fh>;
}

# --- what the sources run ----------------------------------------------------------

my %uses;    # key -> { file:line }; key: the name for a program in a bin dir, else the path
my %paths;   # key -> the absolute paths the code names for it
{
	open my $fh, '-|', "$repo/tools/list-programs" or BAIL_OUT("tools/list-programs: $!");
	while (<$fh>) {
		chomp;
		my ($p, $where) = split /\t/;
		my $key = $p;
		if ($p =~ m{^/(?:usr/)?s?bin/([^/]+)$}) { $key = $1 }
		$uses{$key}{$where} = 1;
		$paths{$key}{$p} = 1 if $p =~ m{^/};
	}
	close $fh or BAIL_OUT("tools/list-programs failed (status $?)");
}
ok(keys %uses >= 10, "tools/list-programs finds the programs the sources run (" . scalar(keys %uses) . ")");

# --- install-deps' packages and the list --------------------------------------------------

my %pkgs;
{
	my $t = slurp("$repo/tools/install-deps");
	my ($body) = $t =~ /^PKGS=\((.*?)^\)/ms or BAIL_OUT('no PKGS=( ... ) array in tools/install-deps');
	$body =~ s/#[^\n]*//g;
	$pkgs{$_} = 1 for split ' ', $body;
}
ok(keys %pkgs >= 10, 'tools/install-deps lists its packages in PKGS (' . scalar(keys %pkgs) . ')');

my %listed;    # key -> { pkg, why, line }
{
	my $n = 0;
	my @bad;
	for my $l (split /\n/, slurp($list_file)) {
		$n++;
		next if $l =~ /^\s*(#|$)/;
		my ($key, $pkg, $why) = $l =~ /^(\S+)\s+(\S+)\s*(.*)$/ or do { push @bad, "line $n: '$l'"; next };
		push @bad, "line $n: $key is listed twice" if $listed{$key};
		push @bad, "line $n: $key: a program of a package \"-\" needs a reason" if $pkg eq '-' && $why eq '';
		$listed{$key} = { pkg => $pkg, why => $why, line => $n };
	}
	ok(!@bad, 'tools/programs.list reads as "program package"') or diag(join "\n", @bad);
}

# --- dpkg's view -------------------------------------------------------------------------------

my (%installed, %essential, %depends, %provided_by);
{
	open my $fh, '-|', 'dpkg-query', '-W',
		'-f=${Package}\t${db:Status-Abbrev}\t${Essential}\t${Depends}, ${Pre-Depends}\t${Provides}\n'
		or BAIL_OUT("dpkg-query: $!");
	while (<$fh>) {
		chomp;
		my ($p, $st, $ess, $deps, $prov) = split /\t/, $_, -1;
		next unless $st =~ /^ii/;
		$installed{$p} = 1;
		$essential{$p} = 1 if $ess eq 'yes';
		$depends{$p} = $deps;
		for (split /\s*,\s*/, $prov // '') { push @{ $provided_by{$1} }, $p if /^([^\s(:]+)/ }
	}
	close $fh or BAIL_OUT('dpkg-query failed');
}

# closure(P): P and what it depends on, as installed here.
my %closure;
sub closure {
	my ($p) = @_;
	return $closure{$p} if $closure{$p};
	my %seen;
	my @todo = ($p);
	while (defined(my $q = shift @todo)) {
		next if $seen{$q}++;
		for my $clause (split /\s*,\s*/, $depends{$q} // '') {
			for my $alt (split /\s*\|\s*/, $clause) {
				my ($name) = $alt =~ /^([^\s(:]+)/ or next;
				push @todo, $name if $installed{$name};
				push @todo, @{ $provided_by{$name} || [] };
			}
		}
	}
	return $closure{$p} = \%seen;
}

# The same file under its other merged-/usr name: dpkg knows some of
# Debian 12's files as /bin/x, others as /usr/bin/x.
sub aliases {
	my ($p) = @_;
	my @a = ($p);
	push @a, $1 if $p =~ m{^/usr(/(?:s?bin|lib\w*)/.*)$};
	push @a, "/usr$p" if $p =~ m{^/(?:s?bin|lib\w*)/};
	return @a;
}

# A chain of paths: the file, then each symlink's target in turn.
sub chain {
	my ($p) = @_;
	my @c;
	for (1 .. 12) {
		push @c, $p;
		last unless -l $p;
		my $t = readlink $p;
		$p = $t =~ m{^/} ? $t : dirname($p) . "/$t";
		1 while $p =~ s{/[^/]+/\.\./}{/} || $p =~ s{/\./}{/};
	}
	return @c;
}

# The file a name runs on a fresh machine: the first of the bin dirs.
sub find_file {
	my ($key) = @_;
	return -e $key ? $key : undef if $key =~ m{^/};
	for (@bin_dirs) { return "$_/$key" if -e "$_/$key" }
	return undef;
}

# Every chain for each program (the alternatives of a name managed by
# update-alternatives: each one's own chain), and one dpkg -S for all paths.
my (%file, %chains, %all_paths);
for my $key (keys %uses, keys %listed) {
	next if $chains{$key};
	my $f = find_file($key) // next;
	$file{$key} = $f;
	my @chains = ([ chain($f) ]);
	for my $hop (@{ $chains[0] }) {
		next unless $hop =~ m{^/etc/alternatives/(.+)$};
		for my $alt (`update-alternatives --list '$1' 2>/dev/null`) {
			chomp $alt;
			push @chains, [ chain($alt) ];
		}
	}
	$chains{$key} = \@chains;
	$all_paths{$_} = 1 for map { aliases($_) } map {@$_} @chains;
}
my %owner;    # path -> [packages]
{
	open my $fh, '-|', 'sh', '-c', 'dpkg -S "$@" 2>/dev/null', 'dpkg', sort keys %all_paths or BAIL_OUT("dpkg -S: $!");
	while (<$fh>) {
		chomp;
		next if /^diversion by /;
		my ($pk, $path) = /^(.+?): (\/.*)$/ or next;
		$owner{$path} = [ map { s/:.*//r } split /,\s*/, $pk ];
	}
	close $fh;    # dpkg -S fails when some path has no owner: expected
}

# owners(chain): the packages of the first path along it that dpkg knows.
sub chain_owners {
	my ($c) = @_;
	for my $p (@$c) {
		for my $a (aliases($p)) { return @{ $owner{$a} } if $owner{$a} }
	}
	return ();
}

sub where { my $u = [ sort keys %{ $uses{ $_[0] } || {} } ]; my $w = join ', ', @$u[0 .. ($#$u < 2 ? $#$u : 2)]; return @$u > 3 ? "$w..." : $w }

# --- the checks ---------------------------------------------------------------------------------

my $hint_add = 'add it to tools/programs.list and its package to PKGS in tools/install-deps';
for my $key (sort keys %uses) {
	my $l = $listed{$key};
	my $f = $file{$key};
	my @owners = $f ? chain_owners($chains{$key}[0]) : ();
	my @found_as = grep { $_ ne $key } map { s{/+$}{}r } grep { -x "$_/" . basename($key) } split /:/, $ENV{PATH} // '';
	if ($l && $l->{pkg} eq '-') {
		pass("$key: runs only when there: $l->{why}");
		next;
	}
	if (!$l) {
		if (@owners && grep { $essential{$_} } @owners) {
			pass("$key: $f from $owners[0] (Essential)");
			next;
		}
		fail("$key: run by the sources but not in tools/programs.list");
		diag("  used at " . where($key));
		if (@owners) {
			diag("  dpkg -S: $f belongs to $owners[0]; $hint_add (package $owners[0] or one that depends on it)");
		} elsif ($f) {
			diag("  $f belongs to no package (installed by hand?); find its Debian package, then $hint_add");
		} else {
			diag("  not installed in @bin_dirs" . (@found_as ? " (only in $found_as[0], which no package installs)" : '') . "; find its Debian package, then $hint_add");
		}
		next;
	}
	my $pkg = $l->{pkg};
	my @problems;
	push @problems, "its package $pkg is not in tools/install-deps: add $pkg to PKGS there"
		unless $pkgs{$pkg} || $essential{$pkg};
	if (!$f) {
		my $also = @found_as ? "; $key is in $found_as[0], which no package installs" : '';
		push @problems, $installed{$pkg}
			? "not in @bin_dirs though $pkg is installed: does $pkg still ship it?$also"
			: "not installed: tools/install-deps should install $pkg$also";
	} else {
		my $c = closure($pkg);
		my @all = map { chain_owners($_) } @{ $chains{$key} };
		if (!@owners && !@all) {
			push @problems, "$f belongs to no package (installed by hand?)" . ($installed{$pkg} ? '' : "; $pkg is not installed: run tools/install-deps");
		} elsif (!grep { $c->{$_} } @owners, @all) {
			push @problems, "dpkg -S: $f belongs to " . join('/', @owners, @all) . ", which $pkg does not bring"
				. ($installed{$pkg} ? '' : " ($pkg is not installed: run tools/install-deps)");
		}
	}
	for my $p (sort keys %{ $paths{$key} || {} }) {
		push @problems, "the code runs $p, which does not exist here" unless -x $p;
	}
	if (@problems) {
		fail("$key: from $pkg");
		diag("  used at " . where($key));
		diag("  $_") for @problems;
	} else {
		pass("$key: $f from " . ($owners[0] // $pkg) . ($owners[0] && $owners[0] ne $pkg ? ", through $pkg" : ''));
	}
}

my @stale = grep { !$uses{$_} } sort keys %listed;
ok(!@stale, 'tools/programs.list names only programs the sources run')
	or diag("  no longer run (remove the line): " . join(', ', map {"$_ (line $listed{$_}{line})"} @stale));

my @missing = grep { !$installed{$_} && !@{ $provided_by{$_} || [] } } sort keys %pkgs;
ok(!@missing, 'every package in PKGS is installed') or diag("  not installed: @missing (run tools/install-deps)");

done_testing();
