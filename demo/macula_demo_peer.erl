%% @doc The demo's agent inside a BEAM peer VM: it owns that VM's service registry, which holds
%% the handlers of the services the VM serves.
%%
%% It exists because every `peer:call/5' runs in a short-lived process: the registry needs a
%% long-lived owner, this gen_server, registered under its module name. The VM's
%% `macula_routing_server' is started by `macula_dht_local', and publishing goes through it.
-module(macula_demo_peer).
-behaviour(gen_server).

-export([start/0, serve/1, unserve/1, call/2]).
-export([init/1, handle_call/3, handle_cast/2]).

-type registry() :: macula_service_registry:registry().

%% @doc Starts the agent (not linked to the short-lived caller).
-spec start() -> ok | {error, term()}.
start() ->
    case gen_server:start({local, ?MODULE}, ?MODULE, [], []) of
        {ok, _Pid} -> ok;
        {error, _} = Error -> Error
    end.

%% @doc Serves `Service' here: its handler goes in the registry.
-spec serve(binary()) -> ok.
serve(Service) ->
    gen_server:call(?MODULE, {serve, Service}).

%% @doc Stops serving `Service'.
-spec unserve(binary()) -> ok.
unserve(Service) ->
    gen_server:call(?MODULE, {unserve, Service}).

%% @doc Runs the handler this VM serves `Service' with, as an incoming request would.
-spec call(binary(), map()) -> term().
call(Service, Args) ->
    {ok, Handler} = gen_server:call(?MODULE, {handler, Service}),
    Handler(Args).

%% The handler of each service a demo VM can serve.
-spec handler(binary()) -> fun((#{a := number(), b := number()}) -> number()).
handler(<<"test.calculator">>) -> fun(#{a := A, b := B}) -> A + B end.

-spec init([]) -> {ok, registry()}.
init([]) ->
    {ok, macula_service_registry:new()}.

-spec handle_call({serve | unserve | handler, binary()}, gen_server:from(), registry()) ->
          {reply, ok | {ok, function()} | not_found, registry()}.
handle_call({serve, Service}, _From, Registry) ->
    {reply, ok, macula_service_registry:advertise_local(Registry, Service, handler(Service), #{})};
handle_call({unserve, Service}, _From, Registry) ->
    {reply, ok, macula_service_registry:unadvertise_local(Registry, Service)};
handle_call({handler, Service}, _From, Registry) ->
    {reply, macula_service_registry:get_local_handler(Registry, Service), Registry}.

-spec handle_cast(term(), registry()) -> {noreply, registry()}.
handle_cast(_Ignored, Registry) ->
    {noreply, Registry}.
